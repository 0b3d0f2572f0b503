"""``aftersales worker | beat | run``: the Celery processes that move cases by themselves.

Thin: each command reads the settings and hands over to ``tasks.worker``. ``run`` is the single
machine form (worker with beat inside); a deployment runs one beat and any number of workers.
"""

from __future__ import annotations

from typing import Annotated

import typer

from config.settings import Settings, get_settings
from entrypoints import bootstrap, cli_http

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


def _checked_settings() -> Settings:
    """Settings, with the database checked first: one clear line, not a Celery traceback."""
    settings = get_settings()
    bootstrap.build_service(settings, bootstrap.make_clock(None))
    return settings


def register(app: typer.Typer) -> None:
    @app.command()
    def worker(
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
    ) -> None:
        """Run a worker: timers, events, outbox relay and side effects (blocks)."""
        from tasks.worker import run_worker

        settings = _checked_settings()
        run_worker(settings, concurrency=concurrency, loglevel=loglevel, queues=queues)

    @app.command()
    def beat(loglevel: LogLevel = "INFO") -> None:
        """Run the scheduler that asks for timer sweeps and outbox relays; exactly one."""
        from tasks.worker import run_beat

        settings = _checked_settings()
        run_beat(settings, loglevel=loglevel)

    @app.command()
    def run(
        concurrency: Concurrency = None,
        loglevel: LogLevel = "INFO",
        api: Annotated[
            bool, typer.Option("--api/--no-api", help="Serve the HTTP API too (aftersales serve).")
        ] = True,
        host: cli_http.Host = cli_http.DEFAULT_HOST,
        port: cli_http.Port = cli_http.DEFAULT_PORT,
    ) -> None:
        """Worker and beat together, for a single machine (the embedded default), and the API."""
        from tasks.worker import run_all

        settings = _checked_settings()
        # A child process, started before the worker forks its pool.
        server = cli_http.start_api_process(host, port) if api else None
        try:
            run_all(settings, concurrency=concurrency, loglevel=loglevel)
        finally:
            if server is not None:
                cli_http.stop_api_process(server)
