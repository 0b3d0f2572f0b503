"""The fence of SQLAlchemy's private API (``persistence/sqlalchemy_internals.py``): fails when
an upgrade removes or changes what the unit of work relies on."""

from __future__ import annotations

import inspect

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.engine.default import DefaultDialect
from sqlalchemy.pool import Pool
from sqlalchemy.pool.base import _ConnectionFairy

from persistence import sqlalchemy_internals
from persistence.types import json_text


def test_sqlalchemy_still_has_the_private_api_the_unit_of_work_uses() -> None:
    assert "_has_events" in inspect.signature(Connection.__init__).parameters
    assert "transaction_reset" in inspect.signature(_ConnectionFairy._close_special).parameters
    assert list(inspect.signature(Pool._invalidate).parameters)[:3] == [
        "self",
        "connection",
        "exception",
    ]
    assert hasattr(DefaultDialect, "_json_serializer")
    assert hasattr(DefaultDialect, "_json_deserializer")


def test_a_connection_without_events_runs_on_the_checked_out_connection(
    engine: Engine,
) -> None:
    pooled = engine.raw_connection()
    pings: list[object] = []

    def ping(connection: object) -> None:
        pings.append(connection)

    sa.event.listen(engine, "engine_connect", ping)
    try:
        connection = sqlalchemy_internals.connection_without_events(engine, pooled)
        assert connection.connection.dbapi_connection is pooled.dbapi_connection
        assert connection.execute(sa.text("SELECT 1")).scalar() == 1
        connection.rollback()
        # the engine's events (db._ping's engine_connect) did not run for it
        assert pings == []
        connection.close()
    finally:
        sa.event.remove(engine, "engine_connect", ping)


def test_a_checkin_after_a_clean_end_skips_the_reset(engine: Engine) -> None:
    resets: list[object] = []
    sa.event.listen(engine, "reset", lambda dbapi, record, state: resets.append(state))
    pooled = engine.raw_connection()
    pooled.dbapi_connection.rollback()  # type: ignore[union-attr]
    checked_out = engine.pool.checkedout()  # type: ignore[attr-defined]
    # when checked in as a clean end
    assert sqlalchemy_internals.check_in_after_reset(pooled)
    # then it is back in the pool, and the pool's reset-on-return was told it is reset
    assert engine.pool.checkedout() == checked_out - 1  # type: ignore[attr-defined]
    assert [state.transaction_was_reset for state in resets] == [True]  # type: ignore[attr-defined]


def test_invalidating_the_pool_closes_the_connection_and_replaces_older_ones(
    engine: Engine,
) -> None:
    older = engine.raw_connection()
    older_dbapi = older.dbapi_connection
    older.close()
    pooled = engine.raw_connection()
    sqlalchemy_internals.invalidate_pool(engine, pooled, RuntimeError("dropped"))
    assert not pooled.is_valid
    fresh = engine.raw_connection()
    try:
        assert fresh.dbapi_connection is not older_dbapi
    finally:
        fresh.close()


def test_the_engines_json_functions_are_read_from_the_dialect(backend: str, engine: Engine) -> None:
    serializer = sqlalchemy_internals.json_serializer(engine.dialect)
    if backend == "sqlite":
        # persistence/db.py gives the SQLite engine its own
        assert serializer is json_text
        assert sqlalchemy_internals.json_deserializer(engine.dialect) is not None
    else:
        assert serializer is None
