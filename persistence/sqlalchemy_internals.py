"""SQLAlchemy's private API, fenced: what ``checkout.Checkout`` (a unit of work on a pooled DBAPI
connection) and ``db.py`` need of the pool, ``Connection`` and the dialects.

Relies on (SQLAlchemy 2.1.9): ``Connection(engine, connection, _has_events=False)``
(``engine/base.py``, ``Connection.__init__``); ``_ConnectionFairy._close_special(
transaction_reset=True)`` (``pool/base.py``: check in without the reset-on-return rollback, as
``Connection.close()`` does after a clean commit); ``Pool._invalidate(connection, exc)``
(``pool/base.py``: invalidate every pooled connection opened before, as ``Connection`` does on
a disconnect); ``DefaultDialect._json_serializer`` / ``_json_deserializer`` (the engine's JSON
functions, ``engine/default.py``).
Why: the DBAPI path runs a transition at 65.0% of raw SQL on SQLite against 38.5% through
``Connection`` (``python -m bench.transition_path --backend sqlite --breakdown``,
docs/adr/0001-fast-sql-path.md); without ``pool_pre_ping`` a checkout and checkin costs 21.0 µs
against 137.1 µs on PostgreSQL
(``python -m bench.probes``). Delete a function when SQLAlchemy offers it
publicly; ``tests/integration/test_sqlalchemy_internals.py`` fails when an upgrade breaks one.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from sqlalchemy.engine import Connection, Dialect, Engine
from sqlalchemy.pool import PoolProxiedConnection


def connection_without_events(engine: Engine, pooled: PoolProxiedConnection) -> Connection:
    """A ``Connection`` on an already checked-out connection, without the engine's events
    (``engine_connect`` would ping it again: ``db._ping``)."""
    return Connection(engine, pooled, _has_events=False)


def check_in_after_reset(pooled: PoolProxiedConnection) -> bool:
    """Check ``pooled`` in without the pool's reset-on-return rollback (its transaction was
    committed or rolled back already); False, doing nothing, if SQLAlchemy cannot."""
    close_special = getattr(pooled, "_close_special", None)
    if close_special is None:
        return False
    close_special(transaction_reset=True)
    return True


def invalidate_pool(engine: Engine, pooled: PoolProxiedConnection, exc: BaseException) -> None:
    """Close ``pooled`` and replace every pooled connection opened before it at its next
    checkout (the server dropped them too), as ``Connection`` does on a disconnect."""
    engine.pool._invalidate(pooled, exc)


def json_serializer(dialect: Dialect) -> Callable[[Any], str] | None:
    """The engine's ``json_serializer`` (None: SQLAlchemy's default, ``json.dumps``)."""
    serializer: Callable[[Any], str] | None = getattr(dialect, "_json_serializer", None)
    return serializer


def json_deserializer(dialect: Dialect) -> Callable[[str], Any] | None:
    """The engine's ``json_deserializer`` (None: SQLAlchemy's default, ``json.loads``)."""
    deserializer: Callable[[str], Any] | None = getattr(dialect, "_json_deserializer", None)
    return deserializer
