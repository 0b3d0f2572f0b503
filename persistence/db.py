"""Engines for the two supported backends: an embedded SQLite file and PostgreSQL.

One engine per database URL per process (pools are per engine, so sharing matters). A PostgreSQL
engine's pool is sized by ``PoolSizing`` (``AFTERSALES_DATABASE_POOL_*``, docs/deploy.md).
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.engine import URL, Engine, make_url

from persistence import sqlalchemy_internals
from persistence.types import json_text, json_value

#: How long a SQLite writer waits for the lock before giving up (ms).
SQLITE_BUSY_TIMEOUT_MS = 30_000


@dataclass(frozen=True)
class PoolSizing:
    """The connection pool of one process's PostgreSQL engine (SQLAlchemy's ``QueuePool``).

    A process holds at most ``size + max_overflow`` connections; a caller that finds them all
    checked out waits ``timeout_s`` and then fails. ``recycle_s`` replaces a connection that old
    when it is next checked out (0: never), for proxies and firewalls that cut idle connections.
    The defaults are SQLAlchemy's own.
    """

    size: int = 5
    max_overflow: int = 10
    timeout_s: float = 30.0
    recycle_s: int = 0


_engines: dict[str, Engine] = {}
#: The sizing each engine of ``_engines`` was built with, by the same key.
_sizings: dict[str, PoolSizing] = {}
_engines_lock = threading.Lock()


def _forget_parent_connections() -> None:
    """Runs in every forked child (Celery's prefork pool forks its children from a main process
    that already checked the schema). The pooled connections are the parent's sockets: two
    processes talking over one socket corrupt each other's sessions (measured: a worker's two
    pool children failed their first tasks with "can't change 'autocommit' now" and "server
    closed the connection unexpectedly"). SQLAlchemy's recipe: ``dispose(close=False)`` in
    the child leaves the parent's connections alone and makes the child open its own
    (https://docs.sqlalchemy.org/en/20/core/pooling.html#using-connection-pools-with-multiprocessing-or-os-fork).
    """
    global _engines_lock
    # Another thread of the parent may have held it at the fork; the child has no such thread.
    _engines_lock = threading.Lock()
    for engine in list(_engines.values()):
        engine.dispose(close=False)


os.register_at_fork(after_in_child=_forget_parent_connections)


def normalize_url(url: str | URL) -> URL:
    """The URL with a driver named: bare ``postgresql://`` / ``postgres://`` means psycopg 3.

    SQLAlchemy would pick psycopg2 for a bare ``postgresql://``, which is not installed, and it
    does not know the ``postgres://`` spelling many hosting platforms hand out.
    """
    parsed = make_url(url)
    if parsed.drivername in ("postgresql", "postgres"):
        parsed = parsed.set(drivername="postgresql+psycopg")
    return parsed


def make_engine(url: str | URL, pool: PoolSizing | None = None) -> Engine:
    """The process-wide engine for ``url``, created on first use.

    ``pool`` sizes a PostgreSQL engine's pool when this call creates it (None: the defaults).
    Asking an existing engine for another sizing is a wiring mistake, not something to ignore:
    the composition root builds the engine first, everything else uses it as it is.
    """
    parsed = normalize_url(url)
    key = parsed.render_as_string(hide_password=False)
    with _engines_lock:
        engine = _engines.get(key)
        if engine is None:
            sizing = pool or PoolSizing()
            engine = _create(parsed, sizing)
            _engines[key] = engine
            _sizings[key] = sizing
        elif pool is not None and pool != _sizings[key]:
            raise ValueError(
                f"the engine of {parsed.render_as_string(hide_password=True)} was built with "
                f"{_sizings[key]}, not {pool}; build it with its sizing before anything uses it"
            )
        return engine


def dispose_engine(url: str | URL) -> None:
    """Close the pooled connections of ``url``'s engine and forget it (tests drop databases)."""
    key = normalize_url(url).render_as_string(hide_password=False)
    with _engines_lock:
        engine = _engines.pop(key, None)
        _sizings.pop(key, None)
    if engine is not None:
        engine.dispose()


def _create(url: URL, pool: PoolSizing) -> Engine:
    if url.get_backend_name() == "sqlite":
        return _create_sqlite(url)
    if url.get_backend_name() == "postgresql":
        return _create_postgresql(url, pool)
    return sa.create_engine(url)


def _create_postgresql(url: URL, pool: PoolSizing) -> Engine:
    # Workers keep connections for hours; a server restart must not surface as errors. The unit
    # of work (persistence/checkout.py ``Checkout``) runs its first statement again on a fresh
    # connection when the server dropped the pooled one, which costs nothing while the server is
    # up; ``pool_pre_ping`` would cost a round trip per unit of work. Everything else using the
    # engine (tokens, readings, health) goes through ``Connection``, and keeps a ping per
    # connection: the pessimistic recipe of SQLAlchemy's pooling docs
    # (https://docs.sqlalchemy.org/en/20/core/pooling.html#disconnect-handling-pessimistic).
    engine = sa.create_engine(
        url,
        pool_size=pool.size,
        max_overflow=pool.max_overflow,
        pool_timeout=pool.timeout_s,
        pool_recycle=pool.recycle_s or -1,  # SQLAlchemy's "never"
    )
    event.listen(engine, "engine_connect", _ping)
    return engine


def _ping(connection: sa.Connection) -> None:
    """What ``pool_pre_ping`` does at checkout, for a ``Connection``: a dead connection is
    replaced, with every pooled one opened before it, before anything runs on it."""
    pooled = connection.connection
    dialect = connection.dialect
    try:
        dialect.do_ping(pooled.dbapi_connection)  # type: ignore[arg-type]
    except dialect.loaded_dbapi.Error as exc:
        if not dialect.is_disconnect(exc, pooled.dbapi_connection, None):
            raise
        sqlalchemy_internals.invalidate_pool(connection.engine, pooled, exc)
        # The Connection checks a new DBAPI connection out when next used.
        connection.invalidate(exc)


def _create_sqlite(url: URL) -> Engine:
    database = url.database or ""
    if database and database != ":memory:" and not database.startswith("file:"):
        Path(database).parent.mkdir(parents=True, exist_ok=True)
    # json.dumps(value, ensure_ascii=False) and json.loads, without their Python frames.
    engine = sa.create_engine(url, json_serializer=json_text, json_deserializer=json_value)
    event.listen(engine, "connect", _sqlite_on_connect)
    # A deferred transaction that reads and then writes must upgrade its lock, and SQLite fails
    # that upgrade at once with "database is locked" when another writer got there first
    # (waiting could deadlock). Taking the write lock up front makes writers queue on
    # busy_timeout instead.
    #
    # SQLAlchemy's pysqlite recipe emits the BEGIN from a ``begin`` event. That event runs outside
    # the Connection's error handling: when BEGIN fails (busy timeout) the Connection is left
    # unable to begin again, and its later statements autocommit. The dialect's ``do_begin``
    # hook runs inside it, and skips the event's execution overhead (about 30 us a transaction).
    engine.dialect.do_begin = _begin_immediate  # type: ignore[method-assign]
    return engine


def _sqlite_on_connect(dbapi_connection: Any, connection_record: Any) -> None:
    # sqlite3 would otherwise issue its own deferred BEGIN, and only before DML; SQLAlchemy takes
    # over transaction control (the pysqlite recipe of its docs) so that ``_begin_immediate``
    # decides how a transaction starts, and SAVEPOINTs nest inside it.
    dbapi_connection.isolation_level = None
    cursor = dbapi_connection.cursor()
    try:
        # WAL lets readers run beside the one writer; NORMAL sync is durable across crashes of
        # the process (only a power loss may drop the last commits), and much faster than FULL.
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA synchronous=NORMAL")
    finally:
        cursor.close()


def _begin_immediate(dbapi_connection: Any) -> None:
    # Already in a transaction only when a unit of work began it on the driver and then asked
    # for a Connection (persistence/checkout.py ``Checkout.connection``): the Connection joins it.
    if not dbapi_connection.in_transaction:
        dbapi_connection.execute("BEGIN IMMEDIATE")
