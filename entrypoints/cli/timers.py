"""``aftersales timers``: list the due deadlines and fire them."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.console import Console
from rich.progress import Progress

from entrypoints import render, views
from entrypoints.cli.common import (
    PROGRESS_THRESHOLD,
    JsonFlag,
    new_console,
    parse_time,
    print_json,
    state_of,
)
from workflow.service import CaseService, TimerRun

#: Timers fired per step of the progress bar of ``timers run-due``.
RUN_BATCH = 25

timers_app = typer.Typer(no_args_is_help=True, help="Deadlines: list and fire the due ones.")


@timers_app.command("due")
def timers_due(
    ctx: typer.Context,
    as_of: Annotated[
        str | None,
        typer.Option("--as-of", metavar="ISO8601", help="Due at this instant (default: now)."),
    ] = None,
    limit: Annotated[int, typer.Option(min=1, max=10_000)] = 100,
    json_output: JsonFlag = False,
) -> None:
    """Pending deadlines that are due, and how late each one is."""
    state = state_of(ctx, json_output)
    service = state.service()
    moment = parse_time(as_of, "--as-of") if as_of is not None else service.clock.now()
    due = service.due_timers(moment, limit)
    if state.json:
        print_json([views.timer_json(t, moment) for t in due])
        return
    console = new_console()
    if not due:
        console.print(f"no timers due as of {views.local(moment, state.zone())}")
        return
    console.print(render.timers_table(due, moment, state.zone()))


@timers_app.command("run-due")
def timers_run_due(
    ctx: typer.Context,
    limit: Annotated[int, typer.Option(min=1, max=100_000, help="Fire at most this many.")] = 1000,
    json_output: JsonFlag = False,
) -> None:
    """Fire every due deadline now (a batch to a transaction, each timer on its own; use --now
    to simulate)."""
    state = state_of(ctx, json_output)
    service = state.service()
    total = len(service.due_timers(limit=limit))
    if total <= PROGRESS_THRESHOLD or state.json:
        runs = service.run_due_timers(limit=limit)
    else:
        runs = _run_in_batches(service, total)
    if state.json:
        print_json([views.run_json(run) for run in runs])
        return
    console = new_console()
    if not runs:
        console.print("no timers due")
        return
    console.print(render.runs_table(runs))
    fired = sum(run.fired for run in runs)
    console.print(f"fired {fired} of {len(runs)} due timers")


def _run_in_batches(service: CaseService, total: int) -> list[TimerRun]:
    """Many due timers: fire them a batch at a time so the progress bar can move.

    Bounded by the count taken first, so timers that keep failing (a conflict leaves the timer
    pending) or new ones falling due meanwhile cannot keep the loop going.
    """
    runs: list[TimerRun] = []
    with Progress(console=Console(stderr=True), transient=True) as progress:
        task = progress.add_task("firing due timers", total=total)
        while len(runs) < total:
            batch = service.run_due_timers(limit=min(RUN_BATCH, total - len(runs)))
            if not batch:
                break
            runs.extend(batch)
            progress.advance(task, len(batch))
    return runs
