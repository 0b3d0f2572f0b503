"""``aftersales worker | beat | run``: the Celery processes that move cases by themselves.

Thin: each command reads the settings and hands over to ``tasks.worker``. ``run`` is the single
machine form (worker with beat inside); a deployment runs one beat and any number of workers.
"""

from __future__ import annotations

from typing import Annotated

import typer

from config.settings import Settings, get_settings
from entrypoints import bootstrap

Concurrency = Annotated[
    int, typer.Option("--concurrency", "-c", min=1, help="Tasks run at once by this worker.")
]
LogLevel = Annotated[str, typer.Option("--loglevel", "-l", help="DEBUG, INFO, WARNING, ERROR.")]


def _checked_settings() -> Settings:
    """Settings, with the database checked first: one clear line, not a Celery traceback."""
    settings = get_settings()
    bootstrap.build_service(settings, bootstrap.make_clock(None))
    return settings


def register(app: typer.Typer) -> None:
    @app.command()
    def worker(concurrency: Concurrency = 2, loglevel: LogLevel = "INFO") -> None:
        """Run a worker: timers, events, outbox relay and side effects (blocks)."""
        from tasks.worker import run_worker

        settings = _checked_settings()
        run_worker(settings, concurrency=concurrency, loglevel=loglevel)

    @app.command()
    def beat(loglevel: LogLevel = "INFO") -> None:
        """Run the scheduler that asks for timer sweeps and outbox relays; exactly one."""
        from tasks.worker import run_beat

        settings = _checked_settings()
        run_beat(settings, loglevel=loglevel)

    @app.command()
    def run(concurrency: Concurrency = 2, loglevel: LogLevel = "INFO") -> None:
        """Worker and beat together, for a single machine (the embedded default)."""
        from tasks.worker import run_all

        settings = _checked_settings()
        run_all(settings, concurrency=concurrency, loglevel=loglevel)
