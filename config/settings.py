"""Typed settings read from the environment (``AFTERSALES_*``), built when asked for.

There is no module-level instance: each entry point calls ``get_settings()`` once in its wiring
code, so tests can set the environment (or pass ``Settings(...)``) before anything connects.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

#: The embedded database, relative to the directory the command runs in.
DEFAULT_DATABASE_FILE = Path("var") / "aftersales.db"


def sqlite_url(path: Path) -> str:
    """A ``sqlite:///`` URL for ``path`` made absolute, so it does not move with the cwd later."""
    return f"sqlite:///{path.expanduser().resolve()}"


def _default_database_url() -> str:
    return sqlite_url(Path.cwd() / DEFAULT_DATABASE_FILE)


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="AFTERSALES_", extra="ignore", frozen=True)

    #: SQLAlchemy URL; a plain ``postgresql://`` means psycopg 3. Default: ``./var/aftersales.db``.
    database_url: str = Field(default_factory=_default_database_url)
    #: A TOML file whose keys are laid over ``config/policy.toml``; only changed keys are needed.
    policy_file: Path | None = None
    #: Celery broker: ``redis://host:6379/0`` in production; None means the embedded broker
    #: (the spool folder ``<var>/broker`` beside the database, see docs/workers.md).
    broker_url: str | None = None
    #: Simulation only: a file holding the "now" every process reads (workflow.clock.FileClock).
    clock_file: Path | None = None
    #: Events applied per transaction by a batch (``ingest_events``, ``POST /events``, ``events
    #: ingest``), a savepoint each: one commit (one disk flush) shared by the batch.
    event_batch: int = Field(default=50, ge=1, le=1000)
    #: Due timers fired per transaction by a sweep, a savepoint each. At most 64: PostgreSQL
    #: keeps 64 subtransactions per backend in shared memory and spills beyond that
    #: (https://www.postgresql.org/docs/current/subxacts.html).
    timer_batch: int = Field(default=50, ge=1, le=64)


def get_settings() -> Settings:
    """Settings from the current environment, read afresh on every call."""
    return Settings()
