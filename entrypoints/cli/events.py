"""``aftersales events``: ingest inbound events from JSON lines, and work the dead letters.

A thin adapter over ``workflow.events.ingestion.EventService``; the producers' ledger is read from
``tasks.ledger`` on a Redis broker. The service, rich and the ledger are imported inside the
commands (see ``main``).
"""

from __future__ import annotations

import sys
import time
from collections import Counter
from enum import StrEnum
from typing import TYPE_CHECKING, Annotated, Any

import typer

from entrypoints.cli.common import (
    EXIT_CODES,
    PROGRESS_THRESHOLD,
    JsonFlag,
    State,
    new_console,
    print_error,
    print_json,
    state_of,
)
from entrypoints.cli.inputs import (
    MAX_BATCH_BYTES,
    MAX_ROW_ID,
    AfterId,
    InputError,
    parse_json,
    read_text,
    reason_option,
)
from entrypoints.terminal import printable
from workflow.errors import InvalidInput
from workflow.model import Actor
from workflow.states import Role

if TYPE_CHECKING:
    from datetime import tzinfo

    from rich.table import Table

    from workflow.events.ingestion import EventService, IngestResult
    from workflow.model import DeadLetter

events_app = typer.Typer(
    no_args_is_help=True,
    help="Inbound events (carrier, payment, merchant, buyer): ingest them, work the dead letters.",
)

LetterId = Annotated[
    int, typer.Argument(metavar="ID", min=1, max=MAX_ROW_ID, help="The dead letter's id.")
]
ResolverOption = Annotated[
    str, typer.Option("--actor", help="Who resolves the letter: admin or admin:NAME (kept).")
]
ResolutionOption = Annotated[str, reason_option("Why it is replayed or discarded (kept with it).")]


def _resolver(text: str) -> str:
    actor = Actor.parse(text)
    if actor.role is not Role.ADMIN:
        raise InvalidInput("dead letters are resolved by an admin: --actor admin[:NAME]", "actor")
    return str(actor)


#: Dead letters per page of ``events dead-letters``.
DEFAULT_PAGE = 20
#: Exit code of a replay that still fails, per error code (as ``common.EXIT_CODES``); codes of
#: their own (``stale_event``) mean "cannot apply now", as ``not_allowed`` does.
CANNOT_APPLY_EXIT = 5


class LetterFilter(StrEnum):
    OPEN = "open"
    REPLAYED = "replayed"
    DISCARDED = "discarded"
    ALL = "all"


def _events(ctx: typer.Context, json_output: bool) -> tuple[State, EventService]:
    from entrypoints import composition

    state = state_of(ctx, json_output)
    return state, composition.build_event_service(state.settings(), state.service())


# -- ingest ---------------------------------------------------------------------------------------


@events_app.command("ingest")
def events_ingest(
    ctx: typer.Context,
    source: Annotated[
        str, typer.Argument(metavar="FILE", help="JSON lines, one envelope a line; - reads stdin.")
    ],
    json_output: JsonFlag = False,
) -> None:
    """Ingest the events of a JSON lines file, in order, many to a transaction.

    A line that cannot apply (malformed, unknown case, illegal in the case's state) becomes a
    dead letter and the rest go on; the summary counts each outcome.
    """
    from rich.console import Console
    from rich.progress import Progress

    from workflow.events.ingestion import IngestStatus

    text, name = read_text(source, MAX_BATCH_BYTES)
    lines = [
        (number, _event_document(line, number))
        for number, line in enumerate(text.splitlines(), 1)
        if line.strip()
    ]
    state, service = _events(ctx, json_output)
    outcomes: list[tuple[int, IngestResult]] = []
    # A chunk per transaction (``EventService.ingest_many``): the progress moves a chunk at a time.
    chunks = [lines[at : at + service.max_batch] for at in range(0, len(lines), service.max_batch)]

    def ingest(chunk: list[tuple[int, Any]]) -> None:
        results = service.ingest_many([line for _, line in chunk])
        outcomes.extend(
            (number, result) for (number, _), result in zip(chunk, results, strict=True)
        )

    if state.json or len(lines) <= PROGRESS_THRESHOLD:
        for chunk in chunks:
            ingest(chunk)
    else:
        with Progress(console=Console(stderr=True), transient=True) as progress:
            task = progress.add_task(f"ingesting {name}", total=len(lines))
            for chunk in chunks:
                ingest(chunk)
                progress.advance(task, len(chunk))
    counts = Counter(result.status for _, result in outcomes)
    summary = {status.value: counts.get(status, 0) for status in IngestStatus}
    if state.json:
        print_json(
            {
                "summary": {**summary, "total": len(outcomes)},
                "outcomes": [{"line": n, **result.as_json()} for n, result in outcomes],
            }
        )
        return
    console = new_console()
    unusual = [(n, r) for n, r in outcomes if r.status is not IngestStatus.APPLIED]
    if unusual:
        console.print(_outcomes_table(unusual))
    parts = [f"{count} {status.replace('_', '-')}" for status, count in summary.items() if count]
    console.print(f"{len(outcomes)} events from {name}: " + (", ".join(parts) or "none"))
    if counts.get(IngestStatus.DEAD_LETTERED):
        console.print("see them with: aftersales events dead-letters")


def _event_document(line: str, number: int) -> Any:
    """A line's event parsed within the input bounds; a line that is not JSON at all is passed
    on as text, for the service to keep as a dead letter (the others still apply). Anything
    beyond the bounds refuses the whole file before an event is applied."""
    try:
        return parse_json(line, f"line {number}")
    except InputError as error:
        if error.code == "invalid_json":
            return line
        raise


def _outcomes_table(outcomes: list[tuple[int, IngestResult]]) -> Table:
    from rich import box
    from rich.table import Table
    from rich.text import Text

    table = Table(box=box.SIMPLE_HEAD)
    for column in ("line", "outcome", "event", "case", "reason"):
        table.add_column(column, overflow="fold")
    for number, result in outcomes:
        outcome = result.status.value.replace("_", "-")
        if result.letter_id is not None:
            outcome += f" #{result.letter_id}"
        event = f"{result.source}/{result.event_id or '?'} {result.type or ''}".strip()
        table.add_row(
            str(number),
            Text(outcome, style="bold red" if result.letter_id is not None else "yellow"),
            Text(printable(event)),
            str(result.case_id or "—"),
            Text(printable(result.reason or "")),
        )
    return table


# -- dead letters ---------------------------------------------------------------------------------


@events_app.command("dead-letters")
def events_dead_letters(
    ctx: typer.Context,
    status: Annotated[LetterFilter, typer.Option(help="Which letters.")] = LetterFilter.OPEN,
    limit: Annotated[int, typer.Option(min=1, max=1000)] = DEFAULT_PAGE,
    after: AfterId = None,
    json_output: JsonFlag = False,
) -> None:
    """Events that could not apply, with their reasons; oldest first, paged by id."""
    from workflow.model import DeadLetterStatus

    state, service = _events(ctx, json_output)
    wanted = None if status is LetterFilter.ALL else DeadLetterStatus(status.value)
    # One more than asked tells whether there is a next page.
    letters = service.dead_letters(wanted, after, limit + 1)
    page = letters[:limit]
    next_after = page[-1].id if len(letters) > limit and page else None
    if state.json:
        print_json(
            {"dead_letters": [letter_json(letter) for letter in page], "next_after": next_after}
        )
        return
    console = new_console()
    if not page:
        console.print("no dead letters" if wanted is None else f"no {wanted.value} dead letters")
        return
    console.print(_letters_table(page, state.zone()))
    if next_after is not None:
        console.print(f"more: --after {next_after}")


def letter_json(letter: DeadLetter) -> dict[str, Any]:
    """A dead letter for scripts; bank account numbers in its envelope masked."""
    from entrypoints import views

    envelope = letter.envelope
    return {
        "id": letter.id,
        "status": letter.status.value,
        "source": letter.source,
        "event_id": letter.event_id,
        "type": envelope.get("type") if isinstance(envelope.get("type"), str) else None,
        "code": letter.code,
        "reason": letter.reason,
        "attempts": letter.attempts,
        "received_at": views.iso(letter.received_at),
        "resolved_at": views.iso(letter.resolved_at),
        "resolved_by": letter.resolved_by,
        "resolution": letter.resolution,
        "envelope": views.masked(envelope),
    }


def _letters_table(letters: list[DeadLetter], zone: tzinfo) -> Table:
    from rich import box
    from rich.table import Table
    from rich.text import Text

    from entrypoints import views

    table = Table(box=box.SIMPLE_HEAD)
    widest = max(len(str(letter.id)) for letter in letters)
    table.add_column("id", justify="right", no_wrap=True, min_width=max(widest, 2))
    for column in ("received", "event", "case", "code", "tries", "status", "reason"):
        table.add_column(column, overflow="fold")
    for letter in letters:
        envelope = letter.envelope
        reference = (
            envelope.get("case_id") or envelope.get("tracking_no") or envelope.get("order_id")
        )
        table.add_row(
            str(letter.id),
            views.local(letter.received_at, zone),
            Text(
                printable(
                    f"{letter.source}/{letter.event_id or '?'} {envelope.get('type', '')}".strip()
                )
            ),
            Text(printable(str(reference or "—"))),
            Text(printable(letter.code), style="bold red"),
            str(letter.attempts),
            letter.status.value,
            Text(printable(letter.reason)),
        )
    return table


@events_app.command("replay")
def events_replay(
    ctx: typer.Context,
    letter_id: LetterId,
    actor: ResolverOption,
    reason: ResolutionOption,
    json_output: JsonFlag = False,
) -> None:
    """Ingest an open dead letter again, once its case is ready for it (or the code is fixed).

    Marked replayed when it applies (or is ignored, or turns out already processed); still
    failing, it stays open with one more attempt and the new reason, and the command fails.
    """
    from rich.text import Text

    from workflow.events.ingestion import IngestStatus

    state, service = _events(ctx, json_output)
    result = service.replay(letter_id, _resolver(actor), reason)
    if result.status is IngestStatus.DEAD_LETTERED:
        code = result.code or "error"
        exits = {getattr(error, "code", ""): exit_code for error, exit_code in EXIT_CODES.items()}
        message = f"dead letter {letter_id} still fails: {result.reason}"
        print_error(code, message, {"letter_id": letter_id}, state.json)
        raise typer.Exit(exits.get(code, CANNOT_APPLY_EXIT))
    if state.json:
        print_json(result.as_json())
        return
    new_console().print(Text(printable(f"dead letter {letter_id} replayed: {_describe(result)}")))


@events_app.command("discard")
def events_discard(
    ctx: typer.Context,
    letter_id: LetterId,
    actor: ResolverOption,
    reason: ResolutionOption,
    json_output: JsonFlag = False,
) -> None:
    """Set an open dead letter aside: looked at, it will not apply."""
    state, service = _events(ctx, json_output)
    letter = service.discard(letter_id, _resolver(actor), reason)
    if state.json:
        print_json(letter_json(letter))
        return
    new_console().print(f"dead letter {letter_id} discarded")


def _describe(result: IngestResult) -> str:
    from workflow.events.ingestion import IngestStatus

    if result.status is IngestStatus.APPLIED:
        fired = " + ".join([*result.implied, result.trigger or "?"])
        return f"{fired} moved case {result.case_id} to {result.state}"
    return f"{result.status.value}: {result.reason}"


@events_app.command("unconfirmed")
def events_unconfirmed(
    ctx: typer.Context,
    limit: Annotated[int, typer.Option(min=1, max=1000, help="Due events to list.")] = 20,
    json_output: JsonFlag = False,
) -> None:
    """The producers' ledger (Redis brokers): events kept and not yet confirmed processed, and
    the ones the resender sends again at its next look (docs/events.md)."""
    from rich import box
    from rich.table import Table

    from entrypoints import composition
    from tasks.resender import due_before, summarize

    state = state_of(ctx, json_output)
    ledger = composition.unconfirmed_ledger(state.settings())
    if ledger is None:
        if state.json:
            print_json({"ledger": None})
        else:
            new_console().print("no ledger: the broker is not Redis (producers resend instead)")
        return
    now, after = time.time(), state.settings().worker.event_resend_after_s
    summary = summarize(ledger, after, now)
    listed = [
        {key: (entry.envelope or {}).get(key) for key in ("source", "event_id", "type")}
        | {"resends": entry.resends}
        for entry in ledger.due(due_before(after, now), limit)
    ]
    if state.json:
        print_json(
            {
                "ledger": {"kept": summary.kept, "due": summary.due, "resend_after_s": after},
                "due": listed,
            }
        )
        return
    console = new_console()
    kept, due = summary.kept, summary.due
    console.print(f"{kept} kept, {due} not processed {after:g} s after they were sent")
    if listed:
        table = Table(box=box.SIMPLE_HEAD)
        for column in ("source", "event", "type", "sent again"):
            table.add_column(column)
        for row in listed:
            table.add_row(
                *(printable(str(row[key])) for key in ("source", "event_id", "type")),
                str(row["resends"]),
            )
        console.print(table)


@events_app.command("schema")
def events_schema() -> None:
    """The JSON Schema of the event envelope (docs/event.schema.json is this output)."""
    from workflow.events.schema import schema_text

    sys.stdout.write(schema_text())


@events_app.command("mapping")
def events_mapping() -> None:
    """What each event type does in each state, as the Markdown table of docs/events.md."""
    from workflow.events.mapping import mapping_markdown

    sys.stdout.write(mapping_markdown())
