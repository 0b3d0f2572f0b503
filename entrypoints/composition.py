"""The composition root: settings in, the wired services of a process out.

Every process builds from here: the CLI (``State`` in ``entrypoints/cli/common.py``), the HTTP
API (``http_app``) and the Celery worker (``worker_app``, which the module Celery loads calls).
``load_settings`` is the one place ``Settings()`` reads the environment. Everything heavier
than the standard library is imported by the functions that need it: the CLI imports this
module for every command, ``--help`` included, and a command that only reads never loads
Alembic, Celery or FastAPI (``bench/cli_startup.py``, tests/unit/test_cli_imports.py).
"""

from __future__ import annotations

import logging
import tomllib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

from config.errors import SetupError

if TYPE_CHECKING:
    from celery import Celery
    from fastapi import FastAPI
    from sqlalchemy.engine import Engine
    from sqlalchemy.exc import SQLAlchemyError

    from config.policy import Policy
    from config.settings import DatabaseSettings, Settings
    from config.sources import Sources
    from persistence.db import PoolSizing
    from persistence.migrate import Revision
    from persistence.tokens import SqlTokenStore
    from tasks.kick import RelayKicker
    from tasks.resender import UnconfirmedEvents
    from tasks.runtime import Runtime
    from workflow.clock import Clock
    from workflow.events.ingestion import EventService
    from workflow.orders_service import OrderService
    from workflow.relay import ParkedOutbox
    from workflow.service import CaseService


T = TypeVar("T")


def load_settings() -> Settings:
    """The settings of this process, read from the environment (``AFTERSALES_*``)."""
    from config.settings import Settings

    return Settings()


def build_service(
    settings: Settings, clock: Clock, outbox_written: Callable[[], None] | None = None
) -> CaseService:
    """A service on the configured database and policy, its schema checked (or created).

    ``outbox_written`` is called after commits that wrote outbox rows (workers kick the relay).
    """
    from persistence.unit_of_work import SqlUnitOfWorkFactory
    from workflow.service import CaseService

    policy = build_policy(settings)
    engine = make_engine_for(settings)
    _prepare_schema(settings.database.url, engine)
    return CaseService(
        SqlUnitOfWorkFactory(engine),
        clock,
        policy,
        outbox_written,
        settings.database.timer_batch,
        settings.max_deadline_extension,
    )


def make_engine_for(settings: Settings) -> Engine:
    """The process-wide engine of the configured database (one pool per URL, sized by the
    ``AFTERSALES_DATABASE_POOL_*`` settings)."""
    return _engine(settings.database)


def build_order_service(settings: Settings, service: CaseService) -> OrderService:
    """Orders of record (import, accounts) on the same database, clock and policy as
    ``service``."""
    from persistence.unit_of_work import SqlUnitOfWorkFactory
    from workflow.orders_service import OrderService

    return OrderService(
        SqlUnitOfWorkFactory(_engine(settings.database)), service.clock, service.policy
    )


def build_event_service(settings: Settings, service: CaseService) -> EventService:
    """Inbound event ingestion on the same database and clock as ``service``."""
    from persistence.unit_of_work import SqlUnitOfWorkFactory
    from workflow.events.ingestion import EventService

    uow_factory = SqlUnitOfWorkFactory(_engine(settings.database))
    return EventService(
        service,
        uow_factory,
        service.clock,
        max_batch=settings.database.event_batch,
        sources=build_sources(settings),
    )


def build_parked_outbox(settings: Settings, service: CaseService) -> ParkedOutbox:
    """The outbox rows the relay parked (``aftersales outbox``), on the database and clock of
    ``service`` (whose schema it checked)."""
    from persistence.unit_of_work import SqlUnitOfWorkFactory
    from workflow.relay import ParkedOutbox

    return ParkedOutbox(SqlUnitOfWorkFactory(_engine(settings.database)), service.clock)


def build_token_store(settings: Settings) -> SqlTokenStore:
    """The HTTP API's tokens on the configured database, its schema checked (or created)."""
    from persistence.tokens import SqlTokenStore

    engine = make_engine_for(settings)
    _prepare_schema(settings.database.url, engine)
    return SqlTokenStore(engine)


def relay_kicker(settings: Settings) -> RelayKicker:
    """The ``outbox_written`` hook of the CLI and the API: asks the workers for a relay after
    a commit that wrote outbox rows (workers build theirs in ``build_worker_runtime``)."""
    from tasks.app import create_app
    from tasks.kick import RelayKicker

    return RelayKicker(create_app(settings))


def unconfirmed_ledger(settings: Settings) -> UnconfirmedEvents | None:
    """The producers' ledger on the configured broker; None unless it is Redis."""
    from tasks.ledger import ledger_for

    return ledger_for(settings)


def worker_app(settings: Settings) -> Celery:
    """The Celery app of a worker or beat process, its tasks' runtime installed: built on first
    use in each process (after the pool's fork), from these settings."""
    from tasks import runtime
    from tasks.app import create_app

    app = create_app(settings)
    runtime.install(lambda: build_worker_runtime(settings, app))
    return app


def build_worker_runtime(settings: Settings, app: Celery) -> Runtime:
    """The services the tasks of ``app`` call."""
    from adapters.fake_gateways import build_fake_gateways
    from persistence.task_stats import SqlTaskStats
    from persistence.unit_of_work import SqlUnitOfWorkFactory
    from tasks.kick import RelayKicker
    from tasks.publish import publish
    from tasks.runtime import Runtime
    from workflow.effects import EffectService
    from workflow.relay import OutboxRelay

    # transitions logs every state callback at INFO: one line per transition per worker.
    logging.getLogger("transitions").setLevel(logging.WARNING)
    clock = shared_clock(settings, None)
    kicker = RelayKicker(app, min_interval_s=settings.worker.relay_kick_interval_s)
    cases = build_service(settings, clock, outbox_written=kicker)
    gateways = build_fake_gateways(settings.fakes, settings.database.url, clock)
    effects = EffectService(
        cases, gateways.carrier, gateways.payments, gateways.notifier, gateways.shipper, clock
    )
    engine = make_engine_for(settings)
    relay = OutboxRelay(SqlUnitOfWorkFactory(engine), publish, clock)
    return Runtime(
        settings.worker,
        clock,
        cases,
        build_event_service(settings, cases),
        effects,
        relay,
        gateways,
        unconfirmed_ledger(settings),
        SqlTaskStats(engine),
    )


def http_app(settings: Settings, clock: Clock) -> FastAPI:
    """The API on the configured database, broker and policy; raises ``SetupError`` (one line)
    when the database is unreachable or not migrated, as every other entry point does."""
    from entrypoints.http import ops
    from entrypoints.http.app import create_app
    from entrypoints.http.auth import RateLimiter
    from entrypoints.http.context import ApiContext
    from entrypoints.http.metrics import ApiMetrics, BrokerCollector, UnconfirmedCollector
    from persistence.readings import SqlReadings
    from persistence.tokens import SqlIdempotencyStore, SqlTokenStore

    api = settings.api
    kicker = relay_kicker(settings) if api.kick_relay else None
    case_service = build_service(settings, clock, outbox_written=kicker)
    engine = make_engine_for(settings)
    readings = SqlReadings(engine)
    context = ApiContext(
        settings=api,
        clock=clock,
        cases=case_service,
        events=build_event_service(settings, case_service),
        orders=build_order_service(settings, case_service),
        tokens=SqlTokenStore(engine),
        idempotency=SqlIdempotencyStore(engine, retention=timedelta(hours=api.idempotency_hours)),
        readings=readings,
        rate_limiter=RateLimiter(api.rate_limit_per_minute),
        auth_failures=RateLimiter(api.auth_failures_per_minute),
        readiness={
            "database": ops.database_check(readings, display_url(settings.database.url)),
            "broker": ops.broker_check(settings),
        },
    )
    ledger = unconfirmed_ledger(settings)
    unconfirmed = (
        UnconfirmedCollector(ledger, settings.worker.event_resend_after_s)
        if ledger is not None
        else None
    )
    from tasks.queue_depth import queue_depths

    broker = BrokerCollector(lambda: queue_depths(settings), api.metrics_cache_seconds)
    metrics = ApiMetrics(readings, clock, api.metrics_cache_seconds, unconfirmed, broker)
    return create_app(context, metrics, kicker)


def build_policy(settings: Settings) -> Policy:
    from config.policy import load_policy

    return _load_config("policy file", settings.policy_file, load_policy)


def build_sources(settings: Settings) -> Sources:
    """The configured event producers (``config/sources.toml`` and ``AFTERSALES_SOURCES_FILE``)."""
    from config.sources import load_sources

    return _load_config("sources file", settings.sources_file, load_sources)


def _load_config(what: str, path: Path | None, load: Callable[[Path | None], T]) -> T:
    """A TOML file laid over its defaults in config/; any problem is one line naming the file."""
    from pydantic import ValidationError

    try:
        return load(path)
    except OSError as error:
        raise SetupError(f"{what} {path}: {error.strerror or error}") from None
    except tomllib.TOMLDecodeError as error:
        raise SetupError(f"{what} {path} is not valid TOML: {error}") from None
    except ValidationError as error:
        first = error.errors()[0]
        where = ".".join(str(part) for part in first["loc"])
        raise SetupError(f"{what} {path}: {where}: {first['msg']}") from None
    except ValueError as error:
        raise SetupError(f"{what} {path}: {error}") from None


def make_clock(now: datetime | None) -> Clock:
    """``--now``: a fixed simulation clock at that instant; otherwise the system time."""
    from workflow.clock import FakeClock, SystemClock

    return SystemClock() if now is None else FakeClock(now)


def shared_clock(settings: Settings, now: datetime | None) -> Clock:
    """The clock of the long-running processes (workers, the API): a shared simulation clock
    file (live demo, end-to-end tests) wins, then ``--now``, then the system time."""
    if settings.clock_file is not None:
        from workflow.clock import FileClock

        return FileClock(str(settings.clock_file))
    return make_clock(now)


def upgrade_database(settings: Settings, revision: str = "head") -> str:
    """Apply pending migrations up to ``revision`` (``aftersales db upgrade``); returns the URL
    shown to users."""
    from persistence import migrate

    url = settings.database.url
    _engine(settings.database)
    with _schema_errors(url):
        migrate.upgrade(url, revision)
    return display_url(url)


def downgrade_database(settings: Settings, revision: str) -> str:
    """Undo migrations down to ``revision`` (``aftersales db downgrade``); returns the URL shown
    to users."""
    from persistence import migrate

    url = settings.database.url
    _engine(settings.database)
    with _schema_errors(url):
        migrate.downgrade(url, revision)
    return display_url(url)


@dataclass(frozen=True)
class SchemaStatus:
    """Where a database's schema stands (``aftersales db current``)."""

    database: str
    #: None: no schema yet (an empty database).
    revision: str | None
    head: str | None
    #: Migrations an upgrade would apply, oldest first.
    pending: list[str]


def schema_status(settings: Settings) -> SchemaStatus:
    from persistence import migrate

    url = settings.database.url
    engine = _engine(settings.database)
    with _schema_errors(url), engine.connect() as connection:
        revision = migrate.current_revision(connection)
    return SchemaStatus(
        display_url(url), revision, migrate.head_revision(), migrate.pending(revision)
    )


def migration_history() -> list[Revision]:
    """Every migration this version has, newest first (``aftersales db history``)."""
    from persistence import migrate

    return migrate.history()


def schema_differences(settings: Settings) -> tuple[str, list[str]]:
    """The shown URL, and what differs between the code's tables and the database's schema
    (``aftersales db check``, as ``alembic check``)."""
    from persistence import migrate

    url = settings.database.url
    _engine(settings.database)
    with _schema_errors(url):
        return display_url(url), migrate.differences(url)


@contextmanager
def _schema_errors(url: str) -> Iterator[None]:
    """The errors of a schema command as one line each: a target alembic cannot reach is the
    user's input (exit 2), a schema or database problem a setup error (exit 1)."""
    from sqlalchemy.exc import SQLAlchemyError

    from persistence import migrate
    from workflow.errors import InvalidInput

    try:
        yield
    except migrate.RevisionError as error:
        raise InvalidInput(f"{error} (see `aftersales db history`)") from None
    except migrate.SchemaError as error:
        raise SetupError(f"database {display_url(url)}: {error}") from None
    except SQLAlchemyError as error:
        raise _database_error(url, error) from None


def recreate_embedded_database(settings: Settings) -> None:
    """Delete the SQLite file of ``settings`` and create it afresh at the newest schema (demo)."""
    from sqlalchemy.engine import make_url

    from persistence.db import dispose_engine

    url = make_url(settings.database.url)
    if url.get_backend_name() != "sqlite" or not url.database or url.database == ":memory:":
        raise SetupError(f"only a SQLite file can be recreated, not {display_url(str(url))}")
    # The process-wide engine may hold connections to the old file; close them before deleting.
    dispose_engine(settings.database.url)
    path = Path(url.database)
    for stale in (path, path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm")):
        stale.unlink(missing_ok=True)
    # ``upgrade``, not ``ensure_schema``: the latter remembers per process that this URL was
    # current, which the deleted file no longer is.
    upgrade_database(settings)


def display_url(url: str) -> str:
    """The URL with any password hidden, for messages."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        return make_url(url).render_as_string(hide_password=True)
    except ArgumentError:
        return "<unparsable database URL>"


def is_embedded(url: str) -> bool:
    """SQLite is the embedded database: created on first use, no separate migration step."""
    from sqlalchemy.engine import make_url

    return make_url(url).get_backend_name() == "sqlite"


def _engine(database: DatabaseSettings) -> Engine:
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    from persistence.db import make_engine

    url = database.url
    try:
        make_url(url)
    except ArgumentError:
        # Not echoed: an unparsable URL cannot have its password hidden.
        raise SetupError(
            "AFTERSALES_DATABASE_URL is not a database URL; use e.g. "
            "sqlite:////abs/path/aftersales.db or postgresql://user@host/dbname"
        ) from None
    try:
        return make_engine(url, pool_sizing(database))
    except (ArgumentError, ImportError) as error:
        raise SetupError(f"unusable database URL {display_url(url)}: {error}") from None
    except OSError as error:
        # The SQLite file's directory could not be created (permissions, a file in the way).
        raise SetupError(f"database {display_url(url)}: {error.strerror or error}") from None


def pool_sizing(database: DatabaseSettings) -> PoolSizing:
    """The connection pool the settings ask for (``AFTERSALES_DATABASE_POOL_*``)."""
    from persistence.db import PoolSizing

    return PoolSizing(
        size=database.pool_size,
        max_overflow=database.max_overflow,
        timeout_s=database.pool_timeout_s,
        recycle_s=database.pool_recycle_s,
    )


def _prepare_schema(url: str, engine: Engine) -> None:
    from sqlalchemy.exc import SQLAlchemyError

    from persistence import schema_version

    try:
        with engine.connect() as connection:
            if schema_version.is_current(connection):
                return  # the usual case, answered without loading Alembic
    except SQLAlchemyError as error:
        raise _database_error(url, error) from None
    from persistence import migrate

    try:
        if is_embedded(url):
            migrate.ensure_schema(url)
            return
        # A shared server is migrated deliberately (one deploy step), never as a side effect of
        # whichever command happens to run first against it.
        with engine.connect() as connection:
            current = migrate.current_revision(connection)
        migrate.refuse_unknown(current)
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
