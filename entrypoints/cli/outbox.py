"""``aftersales outbox``: the outbox rows the relay parked, and sending them again.

The relay parks a row after ``AFTERSALES_OUTBOX_MAX_ATTEMPTS`` publishes that no consumer
completed (docs/workers.md, "Outbox rows whose consumer keeps failing"). A thin adapter over
``workflow.relay.ParkedOutbox``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Any

import typer

from entrypoints import composition, views
from entrypoints.cli.common import JsonFlag, State, new_console, print_json, state_of
from entrypoints.cli.inputs import MAX_ROW_ID
from entrypoints.terminal import printable
from workflow.errors import InvalidInput, NotFound
from workflow.model import Actor, OutboxEntry
from workflow.states import Role

if TYPE_CHECKING:
    # The database is loaded by the commands that run (see cli.main): --help starts without.
    from workflow.relay import ParkedOutbox

outbox_app = typer.Typer(
    no_args_is_help=True,
    help="Outbox rows whose consumer kept failing (parked by the relay): list and retry them.",
)

#: Parked rows per page of ``outbox parked``.
DEFAULT_PAGE = 50
#: Parked rows ``outbox retry --all`` reads per step (each step one retry transaction).
ALL_STEP = 500


def _parked(ctx: typer.Context, json_output: bool) -> tuple[State, ParkedOutbox]:
    state = state_of(ctx, json_output)
    return state, composition.build_parked_outbox(state.settings(), state.service())


def _retrier(text: str) -> str:
    actor = Actor.parse(text)
    if actor.role is not Role.ADMIN:
        raise InvalidInput("outbox entries are retried by an admin: --actor admin[:NAME]", "actor")
    return str(actor)


@outbox_app.command("parked")
def outbox_parked(
    ctx: typer.Context,
    after: Annotated[
        int, typer.Option("--after", min=0, max=MAX_ROW_ID, help="Only ids above this (paging).")
    ] = 0,
    limit: Annotated[int, typer.Option("--limit", min=1, max=1000)] = DEFAULT_PAGE,
    json_output: JsonFlag = False,
) -> None:
    """Parked outbox rows, oldest first: published the maximum number of times, never
    completed by their consumer, no longer published."""
    state, parked = _parked(ctx, json_output)
    entries = parked.parked(limit + 1, after)
    page = entries[:limit]
    next_after = page[-1].id if len(entries) > limit else None
    if state.json:
        print_json({"parked": [entry_json(entry) for entry in page], "next_after": next_after})
        return
    console = new_console()
    if not page:
        console.print("no parked outbox entries")
        return
    from rich import box
    from rich.table import Table
    from rich.text import Text

    table = Table(box=box.SIMPLE_HEAD)
    for column in ("id", "topic", "case", "tries", "written", "parked"):
        table.add_column(column, overflow="fold")
    zone = state.zone()
    for entry in page:
        table.add_row(
            str(entry.id),
            Text(printable(entry.topic)),
            str(entry.case_id),
            str(entry.attempts),
            views.local(entry.created_at, zone),
            views.local(entry.parked_at, zone) if entry.parked_at else "—",
        )
    console.print(table)
    if next_after is not None:
        console.print(f"more: --after {next_after}")


def entry_json(entry: OutboxEntry) -> dict[str, Any]:
    return {
        "id": entry.id,
        "topic": entry.topic,
        "case_id": entry.case_id,
        "attempts": entry.attempts,
        "created_at": views.iso(entry.created_at),
        "published_at": views.iso(entry.published_at),
        "parked_at": views.iso(entry.parked_at),
        "payload": views.masked(entry.payload),
    }


@outbox_app.command("retry")
def outbox_retry(
    ctx: typer.Context,
    actor: Annotated[str, typer.Option("--actor", help="Who retries: admin or admin:NAME (kept).")],
    reason: Annotated[str, typer.Option("--reason", help="Why it is retried (kept).")],
    ids: Annotated[
        list[int] | None,
        typer.Argument(
            metavar="ID",
            min=1,
            max=MAX_ROW_ID,
            help="Parked entries to send again (or --all).",
            show_default=False,
        ),
    ] = None,
    every: Annotated[
        bool, typer.Option("--all", help="Every parked entry instead of the ids named.")
    ] = False,
    json_output: JsonFlag = False,
) -> None:
    """Send parked entries again: the relay publishes them within its period (5 s), with the
    whole attempt budget. Each retry is recorded with who did it and why."""
    if every == bool(ids):
        raise InvalidInput("name the entries to retry, or --all (not both)", "ids")
    by = _retrier(actor)
    state, parked = _parked(ctx, json_output)
    retried: list[OutboxEntry] = []
    missing: list[int] = []
    if every:
        # Page by page: each retried row leaves the parked list, so the next read starts over.
        while step := [entry.id for entry in parked.parked(ALL_STEP)]:
            result = parked.retry(step, by, reason)
            retried += result.retried
            if not result.retried:  # all completed or retried meanwhile by someone else
                break
    else:
        result = parked.retry(ids or [], by, reason)
        retried, missing = result.retried, result.not_parked
        if not retried:
            raise NotFound(f"no parked outbox entry among {missing}")
    if state.json:
        print_json({"retried": [entry_json(entry) for entry in retried], "not_parked": missing})
    else:
        console = new_console()
        noun = "entry" if len(retried) == 1 else "entries"
        console.print(f"{len(retried)} outbox {noun} retried by {by}")
        if missing:
            console.print(f"not parked (unknown, completed or retried already): {missing}")
