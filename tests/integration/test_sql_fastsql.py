"""The DBAPI fast path gives what Core execution gives, inside the unit of work's transaction."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta, timezone

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from persistence.fastsql import Prepared
from persistence.tables import cases, timers
from persistence.uow import SqlUnitOfWorkFactory
from workflow.errors import Conflict
from workflow.model import Case, Gift, Item, Payment
from workflow.ports import CaseQuery

NewCase = Callable[..., Case]
T0 = datetime(2026, 11, 20, 2, 0, tzinfo=UTC)


def test_rows_match_core_execution(
    engine: Engine, uow_factory: SqlUnitOfWorkFactory, new_case: NewCase
) -> None:
    tz = timezone(timedelta(hours=8))
    with uow_factory() as uow:
        uow.cases.add(
            new_case(
                skus=("a", "b"),
                gifts=[Gift("g", 1, 300)],
                delivered_at=None,
                payment=Payment("alipay", 1, datetime(2026, 1, 1, 0, 0, 0, 1, tzinfo=tz)),
                details={"说明": "测试", "nested": {"list": [1, 2.5, None, True]}},
            )
        )
        uow.cases.add(new_case(order_id="o-2"))
        uow.commit()

    statement = sa.select(cases).order_by(cases.c.id)
    prepared = Prepared(statement, engine.dialect, returns=list(statement.selected_columns))
    with engine.connect() as connection:
        assert prepared.rows(connection, {}) == [list(row) for row in connection.execute(statement)]


def test_bind_parameters_convert_like_core(engine: Engine, database_url: str) -> None:
    written = datetime(2026, 3, 1, 8, 0, tzinfo=timezone(timedelta(hours=-3)))
    statement = sa.select(sa.cast(sa.bindparam("at", type_=timers.c.due_at.type), sa.String))
    prepared = Prepared(statement, engine.dialect, returns=list(statement.selected_columns))
    with engine.connect() as connection:
        core = connection.execute(statement, {"at": written}).scalar_one()
        assert prepared.rows(connection, {"at": written}) == [[core]]


def test_sqlite_stores_fixed_width_utc_text(
    backend: str, engine: Engine, uow_factory: SqlUnitOfWorkFactory, new_case: NewCase
) -> None:
    if backend != "sqlite":
        pytest.skip("the text form is SQLite's")
    with uow_factory() as uow:
        uow.cases.add(new_case(created_at=datetime(2026, 11, 20, 8, 0, tzinfo=UTC)))
        uow.commit()
    with engine.connect() as connection:
        text = connection.exec_driver_sql("SELECT created_at, typeof(created_at) FROM cases").one()
    # Microseconds are written even when zero: the width is fixed, so text order is time order.
    assert tuple(text) == ("2026-11-20 08:00:00.000000", "text")


def test_in_lists_are_refused(engine: Engine) -> None:
    statement = sa.select(cases.c.id).where(cases.c.state.in_(["a", "b"]))
    with pytest.raises(TypeError, match="rendered at execution time"):
        Prepared(statement, engine.dialect, returns=[cases.c.id])


def test_errors_are_sqlalchemy_errors(engine: Engine, database_url: str) -> None:
    insert = Prepared(sa.insert(timers), engine.dialect, column_keys=["case_id", "kind", "trigger"])
    with engine.connect() as connection, pytest.raises(sa.exc.IntegrityError):
        insert.execute(connection, {"case_id": 1, "kind": "k", "trigger": "t"})


def test_work_after_commit_is_a_new_transaction(
    uow_factory: SqlUnitOfWorkFactory, new_case: NewCase
) -> None:
    with uow_factory() as uow:
        first = uow.cases.add(new_case())
        uow.commit()
        uow.cases.add(new_case(order_id="o-2"))
        # Not committed: leaving the block drops it, and only it.
    with uow_factory() as uow:
        assert [c.id for c in uow.cases.list(CaseQuery())] == [first]


def test_rollback_then_continue(uow_factory: SqlUnitOfWorkFactory, new_case: NewCase) -> None:
    with uow_factory() as uow:
        uow.cases.add(new_case())
        uow.rollback()
        uow.cases.add(new_case(order_id="o-2"))
        uow.commit()
    with uow_factory() as uow:
        assert [c.order_id for c in uow.cases.list(CaseQuery())] == ["o-2"]


def test_save_refuses_to_drop_a_change_to_the_application(
    uow_factory: SqlUnitOfWorkFactory, new_case: NewCase
) -> None:
    with uow_factory() as uow:
        case_id = uow.cases.add(new_case())
        uow.commit()
    with uow_factory() as uow:
        case = uow.cases.get(case_id)
        assert case is not None
        case.items = [*case.items, Item("sku-9", 1, 100)]
        case.version += 1
        with pytest.raises(ValueError, match="items cannot change"):
            uow.cases.save(case, 1)
        uow.commit()
    with uow_factory() as uow:
        stored = uow.cases.get(case_id)
        assert stored is not None and (stored.version, len(stored.items)) == (1, 1)


def test_a_failed_begin_leaves_no_autocommit_behind(
    backend: str, uow_factory: SqlUnitOfWorkFactory, new_case: NewCase
) -> None:
    """A writer that timed out waiting for the lock, then goes on, is still transactional."""
    if backend != "sqlite":
        pytest.skip("BEGIN IMMEDIATE is SQLite's")
    with uow_factory() as waiter:
        raw = waiter.connection.connection.driver_connection
        assert raw is not None
        raw.execute("PRAGMA busy_timeout=50")
        with uow_factory() as holder:
            holder.cases.get(1)  # takes the write lock
            with pytest.raises(Conflict, match="locked"):
                waiter.cases.get(1)
        waiter.cases.add(new_case())
        assert raw.in_transaction
    with uow_factory() as uow:
        assert uow.cases.open_cases_for_items("o-1", ["sku-1"]) == {}
