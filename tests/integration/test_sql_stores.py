"""The SQL stores keep the contract of ``workflow.ports`` on SQLite and PostgreSQL: what the
in-memory stores do not share (times read back in UTC, two units of work at once, statement
counts, the database's own constraints). The shared contract: ``test_store_contract.py``."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime, timedelta, timezone

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from persistence.tables import outbox, timers
from persistence.unit_of_work import SqlUnitOfWork, SqlUnitOfWorkFactory
from workflow.errors import Conflict
from workflow.model import (
    Case,
    Gift,
    Item,
    OutboxMessage,
    Payment,
    RefundRoute,
    Timer,
    TimerStatus,
    TransitionRecord,
)
from workflow.ports import UnitOfWork
from workflow.states import CaseState, CaseType

T0 = datetime(2026, 11, 20, 2, 0, tzinfo=UTC)
SHANGHAI = timezone(timedelta(hours=8))
NEW_YORK = timezone(timedelta(hours=-5))

NewCase = Callable[..., Case]


def _stored(uow_factory: SqlUnitOfWorkFactory, *new: Case) -> list[int]:
    with uow_factory() as uow:
        ids = [uow.cases.add(case) for case in new]
        uow.commit()
    return ids


def _timer(case_id: int, due_at: datetime, **fields: object) -> Timer:
    values: dict[str, object] = {
        "case_id": case_id,
        "kind": "merchant_review",
        "trigger": "auto_approve",
        "state": CaseState.SUBMITTED,
        "version": 1,
        "due_at": due_at,
        "created_at": T0,
    }
    values.update(fields)
    return Timer(**values)  # type: ignore[arg-type]


def _record(case_id: int, seq: int, trigger: str = "approve", **fields: object) -> TransitionRecord:
    values: dict[str, object] = {
        "case_id": case_id,
        "seq": seq,
        "trigger": trigger,
        "from_state": CaseState.SUBMITTED,
        "to_state": CaseState.APPROVED,
        "actor": "merchant:m-1",
        "at": T0 + timedelta(minutes=seq),
    }
    values.update(fields)
    return TransitionRecord(**values)  # type: ignore[arg-type]


def test_the_factory_makes_units_of_work_that_fit_the_port(engine: Engine) -> None:
    uow: UnitOfWork = SqlUnitOfWorkFactory(engine)()
    assert isinstance(uow, SqlUnitOfWork)


# -- cases ----------------------------------------------------------------------------------


def test_case_round_trip(uow_factory: SqlUnitOfWorkFactory, new_case: NewCase) -> None:
    case = new_case(
        skus=("sku-1", "sku-2"),
        type=CaseType.EXCHANGE,
        description="袖口开线，要求换货",
        payment=Payment("wechat", 3_000_000_000, datetime(2026, 11, 10, 21, 30, tzinfo=SHANGHAI)),
        delivered_at=datetime(2026, 11, 14, 8, 15, 30, 123456, tzinfo=NEW_YORK),
        gifts=[Gift("gift-1", 2, 500)],
        requested_amount=5_000,
        refund_amount=4_500,
        gift_deduction=500,
        refund_route=RefundRoute.BANK_TRANSFER,
        refund_attempts=2,
        refund_key="refund-7-2",
        submission_key="sub-1",
        details={"tracking": "SF123", "flags": ["late"], "note": "到付"},
    )
    [case_id] = _stored(uow_factory, case)
    assert case.id == case_id

    with uow_factory() as uow:
        loaded = uow.cases.get(case_id)
    assert loaded == case
    assert loaded is not None
    for moment in (loaded.created_at, loaded.updated_at, loaded.payment.paid_at):
        assert moment.tzinfo is UTC
    assert loaded.delivered_at == datetime(2026, 11, 14, 13, 15, 30, 123456, tzinfo=UTC)
    assert loaded.delivered_at is not None and loaded.delivered_at.tzinfo is UTC
    assert loaded.payment.amount == 3_000_000_000 and type(loaded.payment.amount) is int
    assert loaded.items == [Item("sku-1", 1, 6_450), Item("sku-2", 1, 6_450)]
    assert loaded.gifts == [Gift("gift-1", 2, 500)]
    assert loaded.type is CaseType.EXCHANGE and loaded.refund_route is RefundRoute.BANK_TRANSFER


def test_naive_times_are_refused(uow_factory: SqlUnitOfWorkFactory, new_case: NewCase) -> None:
    with uow_factory() as uow, pytest.raises(ValueError, match="naive datetime"):
        uow.cases.add(new_case(created_at=datetime(2026, 11, 20, 10, 0)))


def test_save_writes_only_over_the_expected_version(
    uow_factory: SqlUnitOfWorkFactory, new_case: NewCase
) -> None:
    [case_id] = _stored(uow_factory, new_case())
    with uow_factory() as first, uow_factory() as second:
        mine = first.cases.get(case_id)
        assert mine is not None
        mine.state, mine.version = CaseState.APPROVED, 2
        mine.updated_at = T0 + timedelta(hours=1)
        first.cases.save(mine, expected_version=1)
        first.commit()

        stale = second.cases.get(case_id)
        assert stale is not None and stale.version == 2
        stale = replace(stale, state=CaseState.CANCELLED, description="late writer", version=2)
        # the miss is a Conflict, at the save or (sent with a later statement) at the commit
        with pytest.raises(Conflict):
            second.cases.save(stale, expected_version=1)
            second.commit()

    with uow_factory() as uow:
        stored = uow.cases.get(case_id)
    assert stored is not None
    assert (stored.state, stored.version, stored.description) == (CaseState.APPROVED, 2, "")
    assert stored.updated_at == T0 + timedelta(hours=1)


# -- transition log ---------------------------------------------------------------------------


def test_log_keeps_records_in_seq_order(
    uow_factory: SqlUnitOfWorkFactory, new_case: NewCase
) -> None:
    [case_id] = _stored(uow_factory, new_case())
    records = [
        _record(case_id, 1, "submit", from_state=None, to_state=CaseState.SUBMITTED),
        _record(case_id, 2, idempotency_key="call-1", data={"note": "ok", "amount": 12_900}),
        _record(
            case_id,
            3,
            "start_refund",
            from_state=CaseState.APPROVED,
            to_state=CaseState.REFUNDING,
            actor="system",
            reason="follow-up",
            idempotency_key="call-1",
            at=datetime(2026, 11, 20, 10, 3, tzinfo=SHANGHAI),
        ),
    ]
    with uow_factory() as uow:
        uow.log.append(records[:1])
        uow.log.append(list(reversed(records[1:])))
        uow.commit()
    with uow_factory() as uow:
        assert uow.log.for_case(case_id) == records
        assert uow.log.by_key(case_id, "call-1") == records[1:]
        assert uow.log.by_key(case_id, "call-2") == []
        assert all(r.at.tzinfo is UTC for r in uow.log.for_case(case_id))


# -- timers ---------------------------------------------------------------------------------


def test_due_compares_instants_not_local_times(
    uow_factory: SqlUnitOfWorkFactory, new_case: NewCase
) -> None:
    ids = _stored(uow_factory, *(new_case(order_id=f"o-{n}") for n in range(4)))
    # Written in Shanghai time these sort the other way round than the instants they name.
    due = [
        datetime(2026, 11, 20, 17, 0, tzinfo=SHANGHAI),  # 09:00 UTC
        datetime(2026, 11, 20, 4, 0, tzinfo=NEW_YORK),  # 09:00 UTC, same instant
        datetime(2026, 11, 20, 3, 30, tzinfo=NEW_YORK),  # 08:30 UTC
        datetime(2026, 11, 20, 16, 59, 59, 999999, tzinfo=SHANGHAI),  # 08:59:59.999999 UTC
    ]
    with uow_factory() as uow:
        armed = [_timer(case_id, moment) for case_id, moment in zip(ids, due, strict=True)]
        for timer in armed:
            uow.timers.arm(timer)
        uow.commit()

    with uow_factory() as uow:
        as_of = datetime(2026, 11, 20, 4, 0, tzinfo=NEW_YORK)
        assert [t.id for t in uow.timers.due(as_of, limit=10)] == [
            armed[2].id,
            armed[3].id,
            armed[0].id,
            armed[1].id,
        ]
        just_before = datetime(2026, 11, 20, 16, 59, 59, 999999, tzinfo=SHANGHAI)
        assert [t.id for t in uow.timers.due(just_before, limit=10)] == [armed[2].id, armed[3].id]
        assert [t.id for t in uow.timers.due(as_of, limit=1)] == [armed[2].id]
        first = uow.timers.due(as_of, limit=1)[0]
        assert first.due_at == datetime(2026, 11, 20, 8, 30, tzinfo=UTC)
        assert first.due_at.tzinfo is UTC


def test_a_case_has_at_most_one_live_timer(
    uow_factory: SqlUnitOfWorkFactory, new_case: NewCase, engine: Engine
) -> None:
    [case_id] = _stored(uow_factory, new_case())
    first = _timer(case_id, T0 + timedelta(hours=48))
    with uow_factory() as uow:
        uow.timers.arm(first)
        uow.commit()
    assert first.id is not None

    with uow_factory() as uow, pytest.raises(Conflict, match="already has a live timer"):
        uow.timers.arm(_timer(case_id, T0 + timedelta(hours=1)))

    with engine.begin() as connection:  # a sweeper's claim keeps the slot taken
        connection.execute(sa.update(timers).values(status="claimed"))
    with uow_factory() as uow:
        pending = uow.timers.pending(case_id)
        assert pending is not None and pending.status is TimerStatus.CLAIMED
        with pytest.raises(Conflict):
            uow.timers.arm(_timer(case_id, T0 + timedelta(hours=1)))

    second = _timer(case_id, T0 + timedelta(hours=2), state=CaseState.APPROVED, version=2)
    with uow_factory() as uow:
        uow.timers.disarm(case_id)
        assert uow.timers.pending(case_id) is None
        uow.timers.arm(second)
        uow.commit()
    with uow_factory() as uow:
        assert uow.timers.pending(case_id) == second
        cancelled = uow.timers.get(first.id)
        assert cancelled is not None and cancelled.status is TimerStatus.CANCELLED


def test_finish_records_when_and_how_late(
    uow_factory: SqlUnitOfWorkFactory, new_case: NewCase, engine: Engine
) -> None:
    ids = _stored(uow_factory, new_case(), new_case(order_id="o-2"))
    fired, stale = _timer(ids[0], T0), _timer(ids[1], T0)
    with uow_factory() as uow:
        uow.timers.arm(fired)
        uow.timers.arm(stale)
        uow.commit()
    assert fired.id is not None and stale.id is not None

    at = datetime(2026, 11, 20, 10, 0, 1, 500000, tzinfo=SHANGHAI)  # 1.5 s late
    with uow_factory() as uow:
        uow.timers.mark_fired(fired, at)
        assert uow.timers.cancel_stale(stale, at)
        uow.commit()
    with uow_factory() as uow:
        done = uow.timers.get(fired.id)
        assert done is not None
        assert (done.status, done.fired_at) == (TimerStatus.FIRED, at)
        assert done.fired_at is not None and done.fired_at.tzinfo is UTC
        dropped = uow.timers.get(stale.id)
        assert dropped is not None and dropped.status is TimerStatus.CANCELLED
        assert uow.timers.pending(ids[0]) is None
        assert uow.timers.due(at, limit=10) == []
        assert uow.timers.get(10_000) is None
    with engine.connect() as connection:
        lateness = connection.execute(sa.select(timers.c.lateness_ms).order_by(timers.c.id))
        assert lateness.scalars().all() == [1_500, 1_500]


def _armed(uow_factory: SqlUnitOfWorkFactory, *case_ids: int) -> list[Timer]:
    """A live timer, due at T0, stored for each case."""
    timers = [_timer(case_id, T0) for case_id in case_ids]
    with uow_factory() as uow:
        for timer in timers:
            uow.timers.arm(timer)
        uow.commit()
    return timers


def test_a_case_is_read_with_its_live_timer_in_one_statement(
    uow_factory: SqlUnitOfWorkFactory, new_case: NewCase, statements: list[str]
) -> None:
    with_timer, without = _stored(uow_factory, new_case(), new_case(order_id="o-2"))
    [timer] = _armed(uow_factory, with_timer)
    statements.clear()
    with uow_factory() as uow:
        # given each case read, one statement each
        assert uow.cases.get(with_timer) is not None and uow.cases.get(without) is not None
        assert len(statements) == 2
        # then their live timers (or none) come with them, as a read of its own would give
        pending = uow.timers.pending(with_timer)
        assert pending is not None and (pending.id, pending.due_at) == (timer.id, timer.due_at)
        assert uow.timers.pending(without) is None
        assert len(statements) == 2
        # and a timer written since is read again
        uow.timers.disarm(with_timer)
        assert uow.timers.pending(with_timer) is None
        fresh = _timer(without, T0 + timedelta(hours=1))
        uow.timers.arm(fresh)
        rearmed = uow.timers.pending(without)
        assert rearmed is not None and rearmed.id == fresh.id


def test_a_batch_of_cases_is_read_with_their_live_timers_and_a_write_forgets_only_its_case(
    uow_factory: SqlUnitOfWorkFactory, new_case: NewCase, statements: list[str]
) -> None:
    first, second, third = _stored(
        uow_factory, new_case(), new_case(order_id="o-2"), new_case(order_id="o-3")
    )
    timers = dict(zip((first, second), _armed(uow_factory, first, second), strict=True))
    statements.clear()
    with uow_factory() as uow:
        # given the three cases read in one statement
        assert sorted(uow.cases.get_many([third, first, second, first])) == [first, second, third]
        assert len(statements) == 1
        # then their live timers come with them
        for case_id, timer in timers.items():
            pending = uow.timers.pending(case_id)
            assert pending is not None and pending.id == timer.id
        assert uow.timers.pending(third) is None
        assert len(statements) == 1
        # and a write to one case's timers makes only that case's be read again
        uow.timers.disarm(first)
        assert uow.timers.pending(first) is None
        read_again = len(statements)
        assert uow.timers.pending(second) is not None and uow.timers.pending(third) is None
        assert len(statements) == read_again


def test_an_event_is_recorded_and_its_case_read_in_one_statement(
    backend: str, uow_factory: SqlUnitOfWorkFactory, new_case: NewCase, statements: list[str]
) -> None:
    [case_id] = _stored(uow_factory, new_case())
    [timer] = _armed(uow_factory, case_id)
    statements.clear()
    with uow_factory() as uow:
        # a new event: recorded, and its case read with the live timer
        recorded = uow.events.record("sf", "e-1", case_id, T0)
        case = uow.cases.get(case_id)
        assert recorded and case is not None and case.id == case_id
        if backend == "postgres":
            assert len(statements) == 1 and statements[0].startswith("WITH ")
        pending = uow.timers.pending(case_id)
        assert pending is not None and pending.id == timer.id
        # the same event again (the case saved meanwhile): not recorded, the case read again
        uow.cases.save(case, case.version)
        statements.clear()
        again = uow.events.record("sf", "e-1", case_id, T0)
        case_again = uow.cases.get(case_id)
        assert not again and case_again is not None and case_again.id == case_id
        if backend == "postgres":
            assert len(statements) == 1 and statements[0].startswith("WITH ")
        # an event naming an unknown case is recorded all the same (the caller decides)
        assert uow.events.record("sf", "e-2", 10_000, T0)
        assert uow.cases.get(10_000) is None
        uow.commit()
    with uow_factory() as uow:
        assert not uow.events.record("sf", "e-1", case_id, T0)
        assert not uow.events.record("sf", "e-2", None, T0)


# -- outbox ---------------------------------------------------------------------------------


def test_outbox_rows_wait_for_the_relay(
    uow_factory: SqlUnitOfWorkFactory, new_case: NewCase, engine: Engine
) -> None:
    [case_id] = _stored(uow_factory, new_case())
    messages = [
        OutboxMessage("case.approved", case_id, {"case_id": case_id, "注": "已同意"}, T0),
        OutboxMessage("refund.requested", case_id, {"amount": 12_900}, T0),
    ]
    with uow_factory() as uow:
        uow.outbox.add(messages)
        uow.outbox.add(messages[:1])
        uow.outbox.add([])
        uow.commit()
    with engine.connect() as connection:
        rows = connection.execute(sa.select(outbox).order_by(outbox.c.id)).all()
    assert [(r.topic, r.case_id, r.payload) for r in rows] == [
        (m.topic, m.case_id, m.payload) for m in [*messages, messages[0]]
    ]
    assert all(r.published_at is None and r.attempts == 0 and r.created_at == T0 for r in rows)
