"""``aftersales timers``: list the due deadlines and fire them."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated

import typer

from entrypoints.cli.common import PROGRESS_THRESHOLD, JsonFlag, new_console, print_json, state_of
from entrypoints.cli.inputs import parse_time

if TYPE_CHECKING:
    from datetime import datetime

    from rich.progress import Progress, TaskID

    from workflow.service import CaseService, TimerRun

#: Timers read and fired per step of ``timers run-due``: one transaction per ``timer_batch``.
RUN_BATCH = 50
#: ``run-due`` with ``--limit`` counts the timers it left due up to this many ("over N" beyond).
REMAINING_LOOK = 10_000

timers_app = typer.Typer(no_args_is_help=True, help="Deadlines: list and fire the due ones.")


@timers_app.command("due")
def timers_due(
    ctx: typer.Context,
    as_of: Annotated[
        str | None,
        typer.Option("--as-of", metavar="ISO8601", help="Due at this instant (default: now)."),
    ] = None,
    limit: Annotated[int, typer.Option(min=1, max=10_000, help="List at most this many.")] = 100,
    json_output: JsonFlag = False,
) -> None:
    """Pending deadlines that are due, and how late each one is, oldest first."""
    from entrypoints import render, views

    state = state_of(ctx, json_output)
    service = state.service()
    moment = parse_time(as_of, "--as-of") if as_of is not None else service.clock.now()
    # One more than shown tells whether more are due, without a count query.
    found = service.due_timers(moment, limit + 1)
    due, more = found[:limit], len(found) > limit
    if state.json:
        print_json({"timers": [views.timer_json(t, moment) for t in due], "more": more})
        return
    console = new_console()
    if not due:
        console.print(f"no timers due as of {views.local(moment, state.zone())}")
        return
    console.print(render.timers_table(due, moment, state.zone()))
    if more:
        console.print(f"more timers are due than these {limit}: --limit N lists up to 10000")


@timers_app.command("run-due")
def timers_run_due(
    ctx: typer.Context,
    limit: Annotated[
        int | None,
        typer.Option(
            min=1,
            help="Fire at most this many, and say how many are left due. Default: until none "
            "is due.",
            show_default=False,
        ),
    ] = None,
    json_output: JsonFlag = False,
) -> None:
    """Fire the due deadlines, until none is due (firing one can make the case's next deadline
    due at once when --now is far ahead); a batch to a transaction, each timer on its own."""
    from entrypoints import render, views

    state = state_of(ctx, json_output)
    service = state.service()
    moment = service.clock.now()
    if state.json or len(service.due_timers(moment, PROGRESS_THRESHOLD + 1)) <= PROGRESS_THRESHOLD:
        runs, tried = fire_until_none_due(service, moment, limit)
    else:
        runs, tried = _with_progress(service, moment, limit)
    left = service.due_timers(moment, REMAINING_LOOK + 1)
    remaining = len(left)
    failing = sum(timer.id in tried for timer in left)
    if state.json:
        print_json({"runs": [views.run_json(run) for run in runs], "remaining": remaining})
        return
    console = new_console()
    if not runs and not remaining:
        console.print("no timers due")
        return
    if runs:
        console.print(render.runs_table(runs))
    fired = sum(run.fired for run in runs)
    console.print(f"fired {fired} of {len(runs)} due timers")
    if remaining:
        count = f"over {REMAINING_LOOK}" if remaining > REMAINING_LOOK else str(remaining)
        why = (
            f"{failing} failed (the case moved meanwhile; run again)"
            if limit is None
            else "--limit reached"
        )
        console.print(f"{count} still due: {why}")


def fire_until_none_due(
    service: CaseService,
    moment: datetime,
    limit: int | None,
    progress: tuple[Progress, TaskID] | None = None,
) -> tuple[list[TimerRun], set[int]]:
    """Fire timers due at ``moment`` a batch at a time until none is left, or ``limit`` fired.

    A timer that did not fire is not tried again in this run: one that failed (a concurrent
    transition won; it stays pending) cannot keep the loop going, and every other round fires,
    cancels or finishes what it read, so the loop ends. Returns the runs and the ids tried
    without firing.
    """
    runs: list[TimerRun] = []
    stuck: set[int] = set()
    while limit is None or len(runs) < limit:
        want = RUN_BATCH if limit is None else min(RUN_BATCH, limit - len(runs))
        # The set-aside ones are due first (oldest first); read past them.
        due = [t for t in service.due_timers(moment, want + len(stuck)) if t.id not in stuck]
        if not due:
            break
        batch = service.fire_timers(due[:want])
        runs.extend(batch)
        stuck.update(run.timer.id for run in batch if not run.fired and run.timer.id is not None)
        if progress is not None:
            bar, task = progress
            bar.update(task, advance=len(batch))
    return runs, stuck


def _with_progress(
    service: CaseService, moment: datetime, limit: int | None
) -> tuple[list[TimerRun], set[int]]:
    from rich.console import Console
    from rich.progress import Progress

    with Progress(console=Console(stderr=True), transient=True) as bar:
        task = bar.add_task("firing due timers", total=limit)
        return fire_until_none_due(service, moment, limit, (bar, task))
