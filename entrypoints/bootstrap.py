"""The one wiring place: settings and a clock in, a ready ``CaseService`` out.

Entry points (the CLI, the demo, later the HTTP API and the workers) never build engines, units
of work or policies themselves; they call ``build_service`` so every process is wired the same way.
"""

from __future__ import annotations

import tomllib
from collections.abc import Callable
from datetime import datetime
from pathlib import Path

from pydantic import ValidationError
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.exc import ArgumentError, SQLAlchemyError

from config.policy import Policy, load_policy
from config.settings import Settings
from persistence import migrate
from persistence.db import dispose_engine, make_engine
from persistence.tokens import SqlTokenStore
from persistence.unit_of_work import SqlUnitOfWorkFactory
from workflow.clock import Clock, FakeClock, SystemClock
from workflow.events.ingestion import EventService
from workflow.service import CaseService


class SetupError(Exception):
    """The service cannot start as configured (database, schema, policy file); one line."""

    code = "setup"


def build_service(
    settings: Settings, clock: Clock, outbox_written: Callable[[], None] | None = None
) -> CaseService:
    """A service on the configured database and policy, its schema checked (or created).

    ``outbox_written`` is called after commits that wrote outbox rows (workers kick the relay).
    """
    policy = build_policy(settings)
    engine = make_engine_for(settings)
    _prepare_schema(settings.database_url, engine)
    return CaseService(
        SqlUnitOfWorkFactory(engine), clock, policy, outbox_written, settings.timer_batch
    )


def make_engine_for(settings: Settings) -> Engine:
    """The process-wide engine of the configured database (one pool per URL)."""
    return _engine(settings.database_url)


def build_event_service(settings: Settings, service: CaseService) -> EventService:
    """Inbound event ingestion on the same database and clock as ``service``."""
    uow_factory = SqlUnitOfWorkFactory(_engine(settings.database_url))
    return EventService(service, uow_factory, service.clock, max_batch=settings.event_batch)


def build_token_store(settings: Settings) -> SqlTokenStore:
    """The HTTP API's tokens on the configured database, its schema checked (or created)."""
    engine = make_engine_for(settings)
    _prepare_schema(settings.database_url, engine)
    return SqlTokenStore(engine)


def build_policy(settings: Settings) -> Policy:
    path = settings.policy_file
    try:
        return load_policy(path)
    except OSError as error:
        raise SetupError(f"policy file {path}: {error.strerror or error}") from None
    except tomllib.TOMLDecodeError as error:
        raise SetupError(f"policy file {path} is not valid TOML: {error}") from None
    except ValidationError as error:
        first = error.errors()[0]
        where = ".".join(str(part) for part in first["loc"])
        raise SetupError(f"policy file {path}: {where}: {first['msg']}") from None


def make_clock(now: datetime | None) -> Clock:
    """``--now``: a fixed simulation clock at that instant; otherwise the system time."""
    return SystemClock() if now is None else FakeClock(now)


def upgrade_database(settings: Settings) -> str:
    """Apply every pending migration (``aftersales db upgrade``); returns the URL shown to users."""
    _engine(settings.database_url)
    try:
        migrate.upgrade(settings.database_url)
    except migrate.SchemaError as error:
        raise SetupError(f"database {display_url(settings.database_url)}: {error}") from None
    except SQLAlchemyError as error:
        raise _database_error(settings.database_url, error) from None
    return display_url(settings.database_url)


def recreate_embedded_database(settings: Settings) -> None:
    """Delete the SQLite file of ``settings`` and create it afresh at the newest schema (demo)."""
    url = make_url(settings.database_url)
    if url.get_backend_name() != "sqlite" or not url.database or url.database == ":memory:":
        raise SetupError(f"only a SQLite file can be recreated, not {display_url(str(url))}")
    # The process-wide engine may hold connections to the old file; close them before deleting.
    dispose_engine(settings.database_url)
    path = Path(url.database)
    for stale in (path, path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm")):
        stale.unlink(missing_ok=True)
    # ``upgrade``, not ``ensure_schema``: the latter remembers per process that this URL was
    # current, which the deleted file no longer is.
    upgrade_database(settings)


def display_url(url: str) -> str:
    """The URL with any password hidden, for messages."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except ArgumentError:
        return "<unparsable database URL>"


def is_embedded(url: str) -> bool:
    """SQLite is the embedded database: created on first use, no separate migration step."""
    return make_url(url).get_backend_name() == "sqlite"


def _engine(url: str) -> Engine:
    try:
        make_url(url)
    except ArgumentError:
        # Not echoed: an unparsable URL cannot have its password hidden.
        raise SetupError(
            "AFTERSALES_DATABASE_URL is not a database URL; use e.g. "
            "sqlite:////abs/path/aftersales.db or postgresql://user@host/dbname"
        ) from None
    try:
        return make_engine(url)
    except (ArgumentError, ImportError) as error:
        raise SetupError(f"unusable database URL {display_url(url)}: {error}") from None
    except OSError as error:
        # The SQLite file's directory could not be created (permissions, a file in the way).
        raise SetupError(f"database {display_url(url)}: {error.strerror or error}") from None


def _prepare_schema(url: str, engine: Engine) -> None:
    try:
        if is_embedded(url):
            migrate.ensure_schema(url)
            return
        # A shared server is migrated deliberately (one deploy step), never as a side effect of
        # whichever command happens to run first against it.
        with engine.connect() as connection:
            current = migrate.current_revision(connection)
    except migrate.SchemaError as error:
        raise SetupError(f"database {display_url(url)}: {error}") from None
    except SQLAlchemyError as error:
        raise _database_error(url, error) from None
    head = migrate.head_revision()
    if current is None:
        raise SetupError(
            f"database {display_url(url)} has no schema yet; run `aftersales db upgrade` first"
        )
    if current != head:
        raise SetupError(
            f"database {display_url(url)} is at schema revision {current}, this version needs "
            f"{head}; run `aftersales db upgrade`"
        )


def _database_error(url: str, error: SQLAlchemyError) -> SetupError:
    # The driver's message is several lines with SQL and a link; its first line says what failed.
    detail = str(getattr(error, "orig", None) or error).strip().splitlines()
    return SetupError(f"database {display_url(url)}: {detail[0] if detail else error}")
