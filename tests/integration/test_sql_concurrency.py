"""Concurrent writers: they queue (SQLite) or lose a compare-and-set (PostgreSQL), never corrupt."""

from __future__ import annotations

import threading
from collections.abc import Callable
from datetime import UTC, datetime

import pytest

from persistence.unit_of_work import SqlUnitOfWork, SqlUnitOfWorkFactory
from workflow.errors import Conflict
from workflow.model import Case, Payment, TransitionRecord
from workflow.orders import Order, OrderLine

WRITERS = 6
WRITES_EACH = 10


def _bump(uow_factory: SqlUnitOfWorkFactory, case_id: int) -> None:
    """One read-modify-write transition, as the service does it."""
    with uow_factory() as uow:
        case = uow.cases.get(case_id)
        assert case is not None
        loaded = case.version
        case.version += 1
        case.refund_attempts += 1
        # A stale version is a Conflict, here or at the commit.
        uow.cases.save(case, loaded)
        uow.log.append(
            [
                TransitionRecord(
                    case_id,
                    case.version,
                    "bump",
                    case.state,
                    case.state,
                    "system",
                    datetime.now(UTC),
                )
            ]
        )
        uow.commit()


def test_concurrent_transitions_all_land(
    backend: str, uow_factory: SqlUnitOfWorkFactory, new_case: Callable[..., Case]
) -> None:
    with uow_factory() as uow:
        case_id = uow.cases.add(new_case())
        uow.commit()
    conflicts: list[Conflict] = []
    failures: list[BaseException] = []

    def writer() -> None:
        try:
            for _ in range(WRITES_EACH):
                while True:
                    try:
                        _bump(uow_factory, case_id)
                        break
                    except Conflict as exc:
                        conflicts.append(exc)
        except BaseException as exc:  # surfaced below; a thread cannot fail the test itself
            failures.append(exc)

    threads = [threading.Thread(target=writer) for _ in range(WRITERS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert failures == []
    with uow_factory() as uow:
        case = uow.cases.get(case_id)
        log = uow.log.for_case(case_id)
    total = WRITERS * WRITES_EACH
    assert case is not None and (case.version, case.refund_attempts) == (1 + total, total)
    assert [r.seq for r in log] == list(range(2, total + 2))
    if backend == "sqlite":
        # BEGIN IMMEDIATE: a writer waits for the lock before reading, so it never reads a
        # version that changes under it, and never fails to upgrade a read lock.
        assert conflicts == []


def _wait_briefly_for_locks(uow: SqlUnitOfWork) -> None:
    if uow.dialect_name == "sqlite":
        # On the raw connection: through SQLAlchemy it would first BEGIN and wait 30 s.
        uow.connection.connection.driver_connection.execute("PRAGMA busy_timeout=100")  # type: ignore[union-attr]
    else:
        uow.connection.exec_driver_sql("SET lock_timeout = '100ms'")


def _order(order_id: str) -> Order:
    return Order(
        order_id,
        "b-1",
        "m-1",
        Payment("alipay", 12_900, datetime(2026, 11, 1, tzinfo=UTC)),
        (OrderLine("sku-1", 1, 12_900, "clothing"),),
    )


def test_submissions_for_one_order_are_serialised(
    backend: str, uow_factory: SqlUnitOfWorkFactory, new_case: Callable[..., Case]
) -> None:
    with uow_factory() as uow:
        for order_id in ("o-1", "o-2"):
            uow.orders.put(_order(order_id), datetime.now(UTC))
        uow.commit()
    with uow_factory() as holder:
        assert holder.orders.lock("o-1") == _order("o-1")
        holder.cases.add(new_case())
        with uow_factory() as waiter:
            _wait_briefly_for_locks(waiter)
            with pytest.raises(Conflict):
                waiter.orders.lock("o-1")
                waiter.cases.of_orders(["o-1"])
        if backend == "postgres":
            with uow_factory() as other_order:
                _wait_briefly_for_locks(other_order)
                assert other_order.orders.lock("o-2") == _order("o-2")
        holder.commit()

    with uow_factory() as after:
        assert after.orders.lock("o-1") == _order("o-1")
        assert len(after.cases.of_orders(["o-1"])["o-1"]) == 1
