"""PostgreSQL connections the server drops (a restart, a failover, ``pg_terminate_backend``) are
recovered without restarting the process, and a transaction cut short writes nothing.

The engine has no ``pool_pre_ping``: a unit of work runs its first statement again on a fresh
connection when the pooled one turns out dead, and ``Connection`` users ping on connect (see
``persistence/db.py``). Each test drops the server connections of its own throwaway database only.
"""

from __future__ import annotations

import os
import time
from datetime import UTC, datetime

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.pool import NullPool

from config.policy import load_policy
from persistence.db import normalize_url
from persistence.unit_of_work import SqlUnitOfWorkFactory
from workflow.clock import FakeClock
from workflow.model import Actor, TimerStatus
from workflow.service import CaseService
from workflow.states import CaseState, CaseType, Role

from .conftest import POSTGRES_ENV, submit_with_order
from .test_service_sql import application

NOW = datetime(2026, 11, 20, 2, 0, tzinfo=UTC)
MERCHANT = Actor(Role.MERCHANT, "m1")


@pytest.fixture(autouse=True)
def _postgres_only(backend: str) -> None:
    if backend != "postgres":
        pytest.skip("SQLite has no server to drop connections")


def _drop_server_connections(database_url: str) -> int:
    """Terminate every server backend of this test's database, and wait until they are gone."""
    database = make_url(database_url).database
    assert database is not None and database.startswith("aftersales_t_")
    admin = sa.create_engine(
        normalize_url(os.environ[POSTGRES_ENV]), isolation_level="AUTOCOMMIT", poolclass=NullPool
    )
    others = "FROM pg_stat_activity WHERE datname = :database AND pid <> pg_backend_pid()"
    try:
        with admin.connect() as connection:
            ended = connection.execute(
                sa.text(f"SELECT count(pg_terminate_backend(pid)) {others}"),
                {"database": database},
            ).scalar_one()
            deadline = time.monotonic() + 10
            while connection.execute(
                sa.text(f"SELECT count(*) {others}"), {"database": database}
            ).scalar_one():
                assert time.monotonic() < deadline, "backends still alive after 10 s"
                time.sleep(0.05)
    finally:
        admin.dispose()
    return int(ended)


def _hold_connections(factory: SqlUnitOfWorkFactory, count: int) -> None:
    """Leave ``count`` live connections in the pool (each unit of work checks one out)."""
    units = [factory() for _ in range(count)]
    for unit in units:
        unit.__enter__()
        unit.cases.get(1)
    for unit in units:
        unit.__exit__(None, None, None)


def _service(engine: Engine) -> CaseService:
    return CaseService(SqlUnitOfWorkFactory(engine), FakeClock(NOW), load_policy())


def _rows(engine: Engine, case_id: int) -> dict[str, object]:
    with engine.connect() as connection:

        def query(sql: str) -> list[tuple[object, ...]]:
            rows = connection.execute(sa.text(sql), {"case_id": case_id})
            return [tuple(row) for row in rows]

        return {
            "case": query("SELECT state, version FROM cases WHERE id = :case_id"),
            "log": query(
                'SELECT seq, "trigger" FROM transitions WHERE case_id = :case_id ORDER BY seq'
            ),
            "timers": query("SELECT kind, status FROM timers WHERE case_id = :case_id ORDER BY id"),
            "outbox": query("SELECT topic FROM outbox WHERE case_id = :case_id ORDER BY id"),
        }


#: What submitting then approving a return leaves.
APPROVED: dict[str, object] = {
    "case": [("approved", 2)],
    "log": [(1, "submit"), (2, "approve")],
    "timers": [
        ("merchant_review", TimerStatus.CANCELLED.value),
        ("return_shipment", TimerStatus.PENDING.value),
    ],
    "outbox": [("case.transitioned",), ("case.transitioned",), ("pickup.requested",)],
}


def test_the_next_transitions_succeed_after_the_server_dropped_every_connection(
    engine: Engine, database_url: str
) -> None:
    service = _service(engine)
    first, second = (
        submit_with_order(service, application(CaseType.RETURN_REFUND, order_id=f"o-{n}")).case.id
        for n in (1, 2)
    )
    assert first is not None and second is not None
    _hold_connections(SqlUnitOfWorkFactory(engine), 3)

    assert _drop_server_connections(database_url) >= 3

    # Each of these takes a pooled connection that the server closed.
    for case_id in (first, second):
        result = service.fire(case_id, "approve", MERCHANT)
        assert result.case.state is CaseState.APPROVED and result.case.version == 2
    for case_id in (first, second):
        assert _rows(engine, case_id) == APPROVED


def test_core_connections_and_core_first_units_of_work_recover_too(
    engine: Engine, database_url: str
) -> None:
    _hold_connections(SqlUnitOfWorkFactory(engine), 2)
    assert _drop_server_connections(database_url) >= 2
    # Tokens, readings and health checks use Connection directly.
    with engine.connect() as connection:
        assert connection.execute(sa.text("SELECT 1")).scalar_one() == 1
    _hold_connections(SqlUnitOfWorkFactory(engine), 2)
    assert _drop_server_connections(database_url) >= 2
    # A unit of work whose first statement goes through its Connection.
    with SqlUnitOfWorkFactory(engine)() as uow:
        assert uow.connection.execute(sa.text("SELECT 2")).scalar_one() == 2


@pytest.mark.parametrize("cut_before", ["next statement", "commit"])
def test_a_transition_cut_short_by_the_server_writes_nothing(
    engine: Engine, database_url: str, cut_before: str
) -> None:
    service = _service(engine)
    case_id = submit_with_order(service, application(CaseType.RETURN_REFUND)).case.id
    assert case_id is not None
    before = _rows(engine, case_id)

    with pytest.raises(sa.exc.DBAPIError) as raised, SqlUnitOfWorkFactory(engine)() as uow:
        # The first half of an approval: the case row is compared-and-set ...
        case = uow.cases.get(case_id)
        assert case is not None
        case.state, case.version = CaseState.APPROVED, 2
        uow.cases.save(case, 1)
        # (read back: the compare-and-set went out, whenever the store sends it)
        written = uow.cases.get(case_id)
        assert written is not None and written.state is CaseState.APPROVED
        # ... then the server drops the connection.
        _drop_server_connections(database_url)
        if cut_before == "commit":
            uow.commit()
        else:
            uow.timers.disarm(case_id)
    # Not retried: something was already written on the lost connection.
    assert raised.value.connection_invalidated
    assert _rows(engine, case_id) == before

    result = service.fire(case_id, "approve", MERCHANT)
    assert result.case.version == 2
    assert _rows(engine, case_id) == APPROVED
