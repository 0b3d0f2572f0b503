"""``aftersales worker | beat | run``: the Celery processes that move cases by themselves.

Thin: each command checks the database and hands over to ``entrypoints.worker``. ``run`` is the
single machine form (worker with beat inside); a deployment runs one beat and any number of
workers.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated

import typer

from entrypoints.cli import serve
from entrypoints.cli.common import State

if TYPE_CHECKING:
    from config.settings import Settings

Concurrency = Annotated[
    int | None,
    typer.Option(
        "--concurrency",
        "-c",
        min=1,
        help="Tasks run at once by this worker. Default: 2 per core on PostgreSQL, 2 on SQLite.",
        show_default=False,
    ),
]
LogLevel = Annotated[str, typer.Option("--loglevel", "-l", help="DEBUG, INFO, WARNING, ERROR.")]
Hostname = Annotated[
    str | None,
    typer.Option(
        "--hostname",
        "-n",
        help="Node name shown in Flower, celery events and celery inspect, e.g. "
        "'sweeper@%h' (%h: this host). Default: aftersales-<pid>@<host>, unique per process.",
        show_default=False,
    ),
]


def _checked_settings(ctx: typer.Context) -> Settings:
    """Settings, with the database checked first: one clear line, not a Celery traceback."""
    from entrypoints import composition  # imported by the commands that run: see cli.main

    settings = ctx.ensure_object(State).settings()
    composition.build_service(settings, composition.make_clock(None))
    return settings


def worker(
    ctx: typer.Context,
    concurrency: Concurrency = None,
    loglevel: LogLevel = "INFO",
    queues: Annotated[
        str | None,
        typer.Option(
            "--queues",
            "-Q",
            help="Only these queues, comma-separated: 'timers' for a dedicated timer "
            "sweeper, 'celery' for everything else. Default: both.",
        ),
    ] = None,
    hostname: Hostname = None,
) -> None:
    """Run a worker: timers, events, outbox relay and side effects (blocks)."""
    from entrypoints.worker import run_worker

    settings = _checked_settings(ctx)
    run_worker(
        settings, concurrency=concurrency, loglevel=loglevel, queues=queues, hostname=hostname
    )


def beat(ctx: typer.Context, loglevel: LogLevel = "INFO") -> None:
    """Run the scheduler that asks for timer sweeps and outbox relays; exactly one."""
    from entrypoints.worker import run_beat

    settings = _checked_settings(ctx)
    run_beat(settings, loglevel=loglevel)


def run(
    ctx: typer.Context,
    concurrency: Concurrency = None,
    loglevel: LogLevel = "INFO",
    api: Annotated[
        bool, typer.Option("--api/--no-api", help="Serve the HTTP API too (aftersales serve).")
    ] = True,
    host: serve.Host = serve.DEFAULT_HOST,
    port: serve.Port = serve.DEFAULT_PORT,
    hostname: Hostname = None,
) -> None:
    """Worker and beat together, for a single machine (the embedded default), and the API."""
    from entrypoints.worker import run_all

    settings = _checked_settings(ctx)
    if api:
        serve.check_port(host, port)
    # A child process, started before the worker forks its pool.
    server = serve.start_api_process(host, port) if api else None
    try:
        run_all(settings, concurrency=concurrency, loglevel=loglevel, hostname=hostname)
    finally:
        if server is not None:
            serve.stop_api_process(server)
