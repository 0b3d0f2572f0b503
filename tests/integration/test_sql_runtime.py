"""The runtime stores on SQLite and PostgreSQL, what only SQL has: the tracking-number indexes,
migrations of the runtime tables, and concurrent claimers, relays and deliveries. The behaviour
every store shares is the contract suite's (``test_store_contract.py``)."""

from __future__ import annotations

import threading
from collections.abc import Callable
from datetime import UTC, datetime, timedelta, timezone

import pytest
import sqlalchemy as sa
from alembic import command
from sqlalchemy.engine import Engine

from persistence.migrate import alembic_config
from persistence.tables import cases, outbox, timers
from persistence.unit_of_work import SqlUnitOfWorkFactory
from workflow.model import (
    Case,
    OutboxMessage,
    Timer,
)

T0 = datetime(2026, 11, 20, 2, 0, tzinfo=UTC)
SHANGHAI = timezone(timedelta(hours=8))
#: Long enough for a slow CI machine, short enough that a lock wait fails the test.
BARRIER_TIMEOUT = 20

NewCase = Callable[..., Case]


def _stored(uow_factory: SqlUnitOfWorkFactory, *new: Case) -> list[int]:
    with uow_factory() as uow:
        ids = [uow.cases.add(case) for case in new]
        uow.commit()
    return ids


def _ids(timers: list[Timer]) -> list[int]:
    return [t.id or 0 for t in timers]


# -- cases by reference ---------------------------------------------------------------------


def test_tracking_number_lookup_uses_the_indexes(
    backend: str, uow_factory: SqlUnitOfWorkFactory
) -> None:
    if backend != "sqlite":
        pytest.skip("PostgreSQL's planner picks a plan by table size; checked on SQLite")
    with uow_factory() as uow:
        sql = uow.statements.select_cases_by_tracking_no.sql
        plan = uow.connection.exec_driver_sql(f"EXPLAIN QUERY PLAN {sql}", ("x", "x")).all()
    details = " ".join(str(row[-1]) for row in plan)
    assert "ix_cases_return_tracking_no" in details
    assert "ix_cases_outbound_tracking_no" in details


def test_upgrading_from_0001_fills_the_tracking_columns(
    uow_factory: SqlUnitOfWorkFactory, new_case: NewCase, engine: Engine
) -> None:
    [case_id] = _stored(
        uow_factory,
        new_case(details={"return_tracking_no": "SF1", "outbound_tracking_no": "JD1"}),
    )
    config = alembic_config()
    with engine.begin() as connection:
        config.attributes["connection"] = connection
        command.downgrade(config, "0001")
    with engine.connect() as connection:
        columns = {c["name"] for c in sa.inspect(connection).get_columns("cases")}
        assert "return_tracking_no" not in columns
        assert "dead_letters" not in sa.inspect(connection).get_table_names()
    with engine.begin() as connection:
        config.attributes["connection"] = connection
        command.upgrade(config, "head")
    with uow_factory() as uow:
        assert [c.id for c in uow.cases.by_reference(tracking_no="SF1")] == [case_id]
        assert [c.id for c in uow.cases.by_reference(tracking_no="JD1")] == [case_id]


# -- timer claims ---------------------------------------------------------------------------


CLAIMERS = 4
CLAIM_BATCH = 50
CLAIM_ROUNDS = 5
CLAIM_TIMERS = CLAIMERS * CLAIM_BATCH * CLAIM_ROUNDS  # 1000


def test_concurrent_claimers_get_disjoint_batches(
    backend: str, uow_factory: SqlUnitOfWorkFactory, engine: Engine
) -> None:
    _bulk_timers(engine, CLAIM_TIMERS)
    as_of = T0 + timedelta(hours=1)
    start = threading.Barrier(CLAIMERS, timeout=BARRIER_TIMEOUT)
    # On PostgreSQL all claimers hold their first batch's row locks at once: a claimer that
    # waited for another's locks instead of skipping them would break this barrier.
    holding = threading.Barrier(CLAIMERS, timeout=BARRIER_TIMEOUT)
    claimed: dict[str, list[int]] = {}
    failures: list[BaseException] = []

    def claimer(name: str) -> None:
        got: list[int] = []
        try:
            for round_ in range(CLAIM_ROUNDS):
                with uow_factory() as uow:
                    if round_ == 0:
                        start.wait()
                    batch = uow.timers.claim_due(as_of, CLAIM_BATCH, name, T0)
                    if round_ == 0 and backend == "postgres":
                        holding.wait()
                    uow.commit()
                assert all(t.claimed_by == name for t in batch)
                assert [t.due_at for t in batch] == sorted(t.due_at for t in batch)
                got.extend(_ids(batch))
        except BaseException as exc:  # surfaced below; a thread cannot fail the test itself
            failures.append(exc)
            start.abort()
            holding.abort()
        claimed[name] = got

    threads = [threading.Thread(target=claimer, args=(f"sweeper-{n}",)) for n in range(CLAIMERS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert failures == []
    every = [timer_id for got in claimed.values() for timer_id in got]
    assert len(every) == len(set(every)) == CLAIM_TIMERS  # disjoint, and nothing left behind
    assert all(len(got) == CLAIM_BATCH * CLAIM_ROUNDS for got in claimed.values())
    with uow_factory() as uow:
        assert uow.timers.claim_due(as_of, CLAIM_BATCH, "late", T0) == []


def _bulk_timers(engine: Engine, count: int) -> None:
    """``count`` due timers on as many cases, written in bulk (the stores insert one by one)."""
    case_row = {
        "type": "return_refund",
        "state": "submitted",
        "version": 1,
        "buyer_id": "b-1",
        "merchant_id": "m-1",
        "category": "apparel",
        "reason": "no_reason",
        "description": "",
        "payment_channel": "alipay",
        "paid_amount": 100,
        "paid_at": T0,
        "delivered_at": T0,
        "items": [{"sku": "s", "quantity": 1, "unit_price": 100}],
        "gifts": [],
        "refund_amount": 0,
        "gift_deduction": 0,
        "refund_attempts": 0,
        "details": {},
        "created_at": T0,
        "updated_at": T0,
    }
    with engine.begin() as connection:
        connection.execute(
            sa.insert(cases), [{**case_row, "order_id": f"bulk-{n}"} for n in range(count)]
        )
        case_ids = connection.execute(
            sa.select(cases.c.id).where(cases.c.order_id.like("bulk-%")).order_by(cases.c.id)
        ).scalars()
        connection.execute(
            sa.insert(timers),
            [
                {
                    "case_id": case_id,
                    "kind": "merchant_review",
                    "trigger": "auto_approve",
                    "state": "submitted",
                    "version": 1,
                    # Ten timers per second of due time: ties ordered by id.
                    "due_at": T0 + timedelta(seconds=n // 10),
                    "status": "pending",
                    "created_at": T0,
                }
                for n, case_id in enumerate(case_ids)
            ],
        )


# -- outbox ---------------------------------------------------------------------------------


def _messages(case_id: int, count: int, created_at: datetime = T0) -> list[OutboxMessage]:
    return [OutboxMessage("case.event", case_id, {"n": n}, created_at) for n in range(count)]


RELAYS = 2
RELAY_BATCH = 25
RELAY_ROUNDS = 4


@pytest.mark.parametrize("redeliver", [False, True], ids=["fresh", "redelivered"])
def test_concurrent_relays_publish_disjoint_rows(
    backend: str, uow_factory: SqlUnitOfWorkFactory, new_case: NewCase, redeliver: bool
) -> None:
    [case_id] = _stored(uow_factory, new_case())
    total = RELAYS * RELAY_BATCH * RELAY_ROUNDS
    with uow_factory() as uow:
        uow.outbox.add(_messages(case_id, total))
        uow.commit()
    # "redelivered": every row was published an hour ago and no consumer completed it.
    redeliver_before = T0 if redeliver else None
    if redeliver:
        with uow_factory() as uow:
            lost = uow.outbox.unpublished(total)
            uow.outbox.mark_published([e.id for e in lost], T0 - timedelta(hours=1))
            uow.commit()
    start = threading.Barrier(RELAYS, timeout=BARRIER_TIMEOUT)
    holding = threading.Barrier(RELAYS, timeout=BARRIER_TIMEOUT)
    published: dict[str, list[int]] = {}
    failures: list[BaseException] = []

    def relay(name: str) -> None:
        got: list[int] = []
        try:
            for round_ in range(RELAY_ROUNDS):
                with uow_factory() as uow:
                    if round_ == 0:
                        start.wait()
                    batch = uow.outbox.unpublished(RELAY_BATCH, redeliver_before=redeliver_before)
                    if round_ == 0 and backend == "postgres":
                        holding.wait()  # both hold their rows' locks: SKIP LOCKED, no waiting
                    uow.outbox.mark_published([e.id for e in batch], T0)
                    uow.commit()
                got.extend(e.id for e in batch)
        except BaseException as exc:
            failures.append(exc)
            start.abort()
            holding.abort()
        published[name] = got

    threads = [threading.Thread(target=relay, args=(f"relay-{n}",)) for n in range(RELAYS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert failures == []
    every = [entry_id for got in published.values() for entry_id in got]
    assert len(every) == len(set(every)) == total
    assert all(len(got) == RELAY_BATCH * RELAY_ROUNDS for got in published.values())
    with uow_factory() as uow:
        # Published at T0, which is not before T0: nothing to (re)publish, all still pending.
        assert uow.outbox.unpublished(10, redeliver_before=T0) == []
        assert uow.outbox.backlog() == total
        uow.outbox.mark_completed(every, T0 + timedelta(seconds=1))
        assert uow.outbox.backlog() == 0
        uow.commit()


def test_upgrading_from_0002_completes_the_rows_already_published(
    uow_factory: SqlUnitOfWorkFactory, new_case: NewCase, engine: Engine
) -> None:
    [case_id] = _stored(uow_factory, new_case())
    with uow_factory() as uow:
        uow.outbox.add(_messages(case_id, 2))
        published, waiting = uow.outbox.unpublished(10)
        uow.outbox.mark_published([published.id], T0 + timedelta(minutes=1))
        uow.commit()
    config = alembic_config()
    with engine.begin() as connection:
        config.attributes["connection"] = connection
        command.downgrade(config, "0002")
    with engine.connect() as connection:
        columns = {c["name"] for c in sa.inspect(connection).get_columns("outbox")}
        indexes = {ix["name"] for ix in sa.inspect(connection).get_indexes("outbox")}
    assert "completed_at" not in columns
    assert indexes == {"ix_outbox_published_at_id"}
    with engine.begin() as connection:
        config.attributes["connection"] = connection
        command.upgrade(config, "head")
    with uow_factory() as uow:
        # Nothing tells whether the rows published before the upgrade were delivered: taken as
        # completed, so the upgrade does not republish the whole history.
        assert uow.outbox.backlog() == 1
        [entry] = uow.outbox.unpublished(10, redeliver_before=T0 + timedelta(days=1))
        assert entry.id == waiting.id
    with engine.connect() as connection:
        row = connection.execute(sa.select(outbox).where(outbox.c.id == published.id)).one()
    assert row.completed_at == row.published_at == T0 + timedelta(minutes=1)


# -- inbound events -------------------------------------------------------------------------


def test_the_same_event_in_two_transactions_records_once(
    uow_factory: SqlUnitOfWorkFactory,
) -> None:
    second: list[bool] = []
    failures: list[BaseException] = []

    def redelivery() -> None:
        try:
            with uow_factory() as uow:
                # Waits for the first transaction (SQLite: the write lock; PostgreSQL: the
                # unique index entry), then finds the event recorded.
                second.append(uow.events.record("carrier", "evt-1", None, T0))
                uow.commit()
        except BaseException as exc:
            failures.append(exc)

    with uow_factory() as uow:
        assert uow.events.record("carrier", "evt-1", None, T0)
        thread = threading.Thread(target=redelivery)
        thread.start()
        thread.join(timeout=0.3)
        assert thread.is_alive()  # blocked behind this transaction
        uow.commit()
    thread.join()
    assert failures == []
    assert second == [False]
