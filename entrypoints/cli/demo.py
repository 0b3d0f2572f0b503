"""``aftersales demo``: the scripted demo, or the live one on the running service.

The demo modules are imported when the command runs: every other command starts without them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated
from zoneinfo import ZoneInfo

import typer

from entrypoints.cli.common import (
    EXIT_OTHER,
    JsonFlag,
    State,
    new_console,
    print_error,
    print_json,
    state_of,
)
from entrypoints.cli.inputs import InputError


def demo(
    ctx: typer.Context,
    db: Annotated[
        Path | None,
        typer.Option(
            help="SQLite file of the scripted demo (default var/demo.db); deleted and recreated "
            "each run."
        ),
    ] = None,
    live: Annotated[
        bool,
        typer.Option(
            "--live",
            help="Play it on the running service instead: `aftersales run` as a child process, "
            "events through the embedded broker, timers firing on a shared clock "
            "(files in var/demo-live/, recreated each run).",
        ),
    ] = False,
    write_samples: Annotated[
        Path | None,
        typer.Option(
            "--write-samples",
            metavar="DIR",
            help="Instead of a demo, write a sample order (orders.jsonl, delivered yesterday) "
            "and an application for it (application.json) into DIR, for `orders import` and "
            "`case submit`.",
        ),
    ] = None,
    port: Annotated[
        int,
        typer.Option(
            min=1,
            max=65535,
            help="With --live: the port of the API that `aftersales run` serves on 127.0.0.1.",
        ),
    ] = 8000,
    json_output: JsonFlag = False,
) -> None:
    """Run the demo: sample cases of every type moving through their states."""
    state = state_of(ctx, json_output)
    if write_samples is not None:
        _write_samples(state, write_samples)
        return
    if live:
        if db is not None:
            raise InputError("usage", "--db is for the scripted demo; --live uses var/demo-live/")
        _demo_live(state, port)
        return
    from entrypoints import demo as demo_script

    if db is not None:
        _check_replaceable(db)
    outcomes = demo_script.run(
        db or Path("var/demo.db"), console=None if state.json else new_console()
    )
    if state.json:
        print_json([outcome.as_json() for outcome in outcomes])


#: The first bytes of every SQLite database file (https://www.sqlite.org/fileformat.html).
SQLITE_HEADER = b"SQLite format 3\x00"


def _check_replaceable(db: Path) -> None:
    """``--db`` is deleted and recreated: refuse anything there that is not a SQLite database
    (a README given by mistake, ``/dev/null``), which deleting would destroy."""
    if not db.exists():
        return
    if not db.is_file():
        raise InputError(
            "usage", f"--db {db} is not a file; give a SQLite file the demo may replace"
        )
    with db.open("rb") as handle:
        header = handle.read(len(SQLITE_HEADER))
    if header and header != SQLITE_HEADER:
        raise InputError(
            "usage", f"--db {db} is not a SQLite database; the demo replaces only its own files"
        )


def _write_samples(state: State, folder: Path) -> None:
    from entrypoints import composition, samples

    # The clock and zone of every command (``--now`` moves the samples' dates with it); no
    # database is opened.
    zone = ZoneInfo(composition.build_policy(state.settings()).timezone)
    written = samples.write_samples(folder, composition.make_clock(state.now).now(), zone)
    if state.json:
        print_json({"written": [str(path) for path in written]})
        return
    for path in written:
        new_console().print(f"wrote {path}")


def _demo_live(state: State, port: int) -> None:
    from entrypoints import live_demo, live_worker

    try:
        console = None if state.json else new_console()
        result = live_demo.run(live_demo.DEMO_DIR, console, api_port=port)
    except live_worker.DemoFailed as error:
        print_error("demo_failed", str(error), {}, state.json)
        raise typer.Exit(EXIT_OTHER) from None
    except KeyboardInterrupt:
        typer.echo("interrupted; the demo's worker was stopped", err=True)
        raise typer.Exit(130) from None
    if state.json:
        print_json(result)
