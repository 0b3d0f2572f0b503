"""``aftersales``: the command line, a thin adapter from the shell to the service layer.

Each command parses its arguments, calls one service method and prints the result: rich tables
for people, or JSON with ``--json`` (globally, ``aftersales --json case show 1``, or per command,
``aftersales case show 1 --json``). ``--now`` runs a command as of another instant on a fixed
simulation clock, which is how the demo and the tests travel in time. The exit codes are listed
in ``entrypoints/cli/common.py``. This module mounts the command groups, one module each.

Start-up time is part of the interface (``bench/cli_startup.py``): the command modules import
only typer and the few light names their options need at the top; the database, rich, Celery
and the web stack are imported inside the commands that use them, so ``--help`` loads none of
them and ``case show`` loads no Alembic, Celery or FastAPI.
"""

from __future__ import annotations

import gc
from typing import Annotated

import typer

from entrypoints.cli import (
    cases,
    db,
    demo,
    diagram,
    events,
    orders,
    outbox,
    serve,
    timers,
    tokens,
    workers,
)
from entrypoints.cli.common import JsonFlag, ReportingGroup, State
from entrypoints.cli.inputs import parse_time

app = typer.Typer(
    cls=ReportingGroup,
    name="aftersales",
    help="After-sales cases: submit, move through their workflow, watch their deadlines.",
    epilog="Exit codes: 0 ok, 1 setup/database, 2 invalid input, 3 not found, 4 forbidden, "
    "5 not allowed, 6 conflict, 7 refused by policy.",
    no_args_is_help=True,
    add_completion=False,
    # Plain help: the rich panels label every flag ``<bool>`` (``--json <bool>``, ``--help
    # <bool>``) and cost ``--help`` the import of rich (~60 ms).
    rich_markup_mode=None,
    # Locals would print settings such as the database URL with its password.
    pretty_exceptions_show_locals=False,
)
app.add_typer(orders.orders_app, name="orders")
app.add_typer(cases.case_app, name="case")
app.add_typer(timers.timers_app, name="timers")
app.add_typer(db.db_app, name="db")
app.add_typer(events.events_app, name="events")
app.add_typer(outbox.outbox_app, name="outbox")
# In this order: ``--help`` lists groups and commands as they were registered.
app.command("worker")(workers.worker)
app.command("beat")(workers.beat)
app.command("run")(workers.run)
app.add_typer(tokens.tokens_app, name="tokens")
app.command("serve")(serve.serve)
app.command("diagram")(diagram.diagram)
app.command("demo")(demo.demo)


@app.callback()
def _global_options(
    ctx: typer.Context,
    now: Annotated[
        str | None,
        typer.Option(
            "--now",
            metavar="ISO8601",
            help="Run as of this instant on a fixed simulation clock; needs a timezone, "
            "e.g. 2026-11-20T10:00:00+08:00.",
        ),
    ] = None,
    json_output: JsonFlag = False,
) -> None:
    state = ctx.ensure_object(State)
    state.json = json_output
    state.now = parse_time(now, "--now") if now is not None else None
    ctx.call_on_close(state.close)


def main() -> None:
    """The ``aftersales`` console script."""
    try:
        app()
    finally:
        # At exit the interpreter runs one last cyclic garbage collection over every object
        # the libraries made (SQLAlchemy's and pydantic's, hundreds of thousands), all of them
        # about to go anyway: 70-120 ms of CPU of a 0.5 s ``case show`` (bench/cli_startup.py).
        # Frozen objects are left out of it; the rest of the teardown (atexit handlers, thread
        # joins, stream flushes, connections closed) runs as usual.
        gc.freeze()
