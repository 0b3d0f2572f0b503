"""The in-memory runtime stores keep the SQL stores' semantics (``test_sql_runtime.py`` of the
integration tests): parcel lookups, timer claims, the outbox relay's reads, event dedupe and dead
letters."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from workflow.memory import InMemoryDatabase, InMemoryUnitOfWorkFactory
from workflow.model import (
    Case,
    DeadLetter,
    DeadLetterStatus,
    Item,
    OutboxMessage,
    Payment,
    Timer,
    TimerStatus,
)
from workflow.ports import UnitOfWorkFactory
from workflow.states import CaseState, CaseType

T0 = datetime(2026, 11, 20, 2, 0, tzinfo=UTC)


def _case(order_id: str = "o-1", sku: str = "sku-1", **fields: Any) -> Case:
    values: dict[str, Any] = {
        "type": CaseType.RETURN_REFUND,
        "state": CaseState.SUBMITTED,
        "order_id": order_id,
        "buyer_id": "b-1",
        "merchant_id": "m-1",
        "category": "apparel",
        "reason": "no_reason",
        "payment": Payment("alipay", 12_900, T0 - timedelta(days=5)),
        "delivered_at": T0 - timedelta(days=2),
        "items": [Item(sku, 1, 12_900)],
        "gifts": [],
        "created_at": T0,
        "updated_at": T0,
    }
    values.update(fields)
    return Case(**values)


def _timer(case_id: int, due_at: datetime) -> Timer:
    return Timer(case_id, "merchant_review", "auto_approve", CaseState.SUBMITTED, 1, due_at, T0)


def _armed(factory: InMemoryUnitOfWorkFactory, due: list[datetime]) -> list[Timer]:
    with factory() as uow:
        armed = []
        for n, due_at in enumerate(due):
            timer = _timer(uow.cases.add(_case(order_id=f"o-{n}")), due_at)
            uow.timers.arm(timer)
            armed.append(timer)
        uow.commit()
    return armed


def _ids(timers: list[Timer]) -> list[int | None]:
    return [t.id for t in timers]


def test_the_in_memory_factory_fits_the_port(uow_factory: InMemoryUnitOfWorkFactory) -> None:
    factory: UnitOfWorkFactory = uow_factory
    with factory() as uow:
        assert uow.events.dead_letters() == []


def test_by_reference(uow_factory: InMemoryUnitOfWorkFactory) -> None:
    with uow_factory() as uow:
        first = uow.cases.add(_case(sku="a", details={"return_tracking_no": "SF1"}))
        second = uow.cases.add(_case(sku="b", details={"outbound_tracking_no": "JD2"}))
        ended = uow.cases.add(
            _case(sku="c", state=CaseState.CLOSED, details={"return_tracking_no": "SF3"})
        )
        uow.cases.add(_case(order_id="o-2"))
        uow.commit()
    with uow_factory() as uow:
        assert [c.id for c in uow.cases.by_reference(order_id="o-1")] == [second, first]
        assert [c.id for c in uow.cases.by_reference(tracking_no="SF1")] == [first]
        assert [c.id for c in uow.cases.by_reference(tracking_no="JD2")] == [second]
        assert [c.id for c in uow.cases.by_reference(tracking_no="SF3")] == [ended]
        assert [c.id for c in uow.cases.by_reference("o-1", "JD2")] == [second]
        assert uow.cases.by_reference("o-2", "JD2") == []
        assert uow.cases.by_reference(tracking_no="nope") == []
        with pytest.raises(ValueError):
            uow.cases.by_reference()


def test_claim_due_reclaim_and_finish(uow_factory: InMemoryUnitOfWorkFactory) -> None:
    later, early, not_due = _armed(
        uow_factory, [T0 + timedelta(minutes=3), T0 + timedelta(minutes=1), T0 + timedelta(hours=1)]
    )
    as_of = T0 + timedelta(minutes=10)
    with uow_factory() as uow:
        claimed = uow.timers.claim_due(as_of, 1, "a", as_of - timedelta(minutes=5))
        assert _ids(claimed) == _ids([early])
        assert (claimed[0].status, claimed[0].claimed_at, claimed[0].claimed_by) == (
            TimerStatus.CLAIMED,
            as_of,
            "a",
        )
        assert _ids(uow.timers.claim_due(as_of, 10, "a", as_of - timedelta(minutes=5))) == _ids(
            [later]
        )
        uow.commit()

    with uow_factory() as uow:
        assert uow.timers.claim_due(as_of, 10, "b", as_of) == []  # not older than the bound
        assert uow.timers.due(as_of, 10) == []  # pending only
        live = uow.timers.pending(early.case_id)
        assert live is not None and live.status is TimerStatus.CLAIMED
        # A claim rolled back leaves the timers as they were.
        assert len(uow.timers.claim_due(as_of, 10, "b", as_of + timedelta(seconds=1))) == 2
        uow.rollback()
        stored = uow.timers.get(early.id or 0)
        assert stored is not None and stored.claimed_by == "a"

    retry_at = as_of + timedelta(minutes=6)
    with uow_factory() as uow:
        taken = uow.timers.claim_due(retry_at, 10, "b", as_of + timedelta(seconds=1))
        assert _ids(taken) == _ids([early, later])
        assert all(t.claimed_by == "b" and t.claimed_at == retry_at for t in taken)
        uow.timers.mark_fired(early, T0 + timedelta(minutes=1, milliseconds=1500))
        assert uow.timers.cancel_stale(later, retry_at)
        uow.commit()

    with uow_factory() as uow:
        done = uow.timers.get(early.id or 0)
        assert done is not None and done.status is TimerStatus.FIRED
        assert uow.timers.pending(early.case_id) is None
        assert uow.timers.lateness(T0) == [1_500]
        assert uow.timers.lateness(retry_at) == []
        untouched = uow.timers.get(not_due.id or 0)
        assert untouched is not None and untouched.status is TimerStatus.PENDING


def test_claimers_one_after_the_other_get_disjoint_batches(
    uow_factory: InMemoryUnitOfWorkFactory,
) -> None:
    _armed(uow_factory, [T0 + timedelta(seconds=n) for n in range(10)])
    batches = []
    for n in range(4):
        with uow_factory() as uow:
            batches.append(_ids(uow.timers.claim_due(T0 + timedelta(minutes=1), 3, f"s{n}", T0)))
            uow.commit()
    every = [i for batch in batches for i in batch]
    assert [len(b) for b in batches] == [3, 3, 3, 1]
    assert len(every) == len(set(every)) == 10


def test_outbox_relay_reads(uow_factory: InMemoryUnitOfWorkFactory, db: InMemoryDatabase) -> None:
    with uow_factory() as uow:
        uow.outbox.add([OutboxMessage("t", 1, {"n": n}, T0) for n in range(3)])
        uow.outbox.add([OutboxMessage("t", 1, {"n": 3}, T0 + timedelta(hours=1))])
        assert uow.outbox.backlog() == 4
        uow.commit()
    with uow_factory() as uow:
        waiting = uow.outbox.unpublished(10)
        assert [e.payload["n"] for e in waiting] == [0, 1, 2, 3]
        assert [e.id for e in waiting] == [1, 2, 3, 4]
        assert [e.id for e in uow.outbox.unpublished(2)] == [1, 2]
        assert [e.id for e in uow.outbox.unpublished(10, T0 + timedelta(hours=1))] == [1, 2, 3]
        assert uow.outbox.unpublished(10, T0) == []
        uow.outbox.mark_published([1, 3, 1], T0 + timedelta(minutes=1))
        # Published is not finished: pending until a consumer completes them.
        assert uow.outbox.backlog() == 4
        assert [e.id for e in uow.outbox.unpublished(10)] == [2, 4]
        uow.commit()
    first = db.outbox[0]
    assert (first.published_at, first.attempts) == (T0 + timedelta(minutes=1), 1)
    assert (db.outbox[1].published_at, db.outbox[1].attempts) == (None, 0)
    assert all(entry.completed_at is None for entry in db.outbox)


def test_outbox_redelivery_and_completion(
    uow_factory: InMemoryUnitOfWorkFactory, db: InMemoryDatabase
) -> None:
    """As ``test_a_published_row_comes_back_until_it_is_completed`` of the SQL stores."""
    with uow_factory() as uow:
        uow.outbox.add([OutboxMessage("t", 1, {"n": n}, T0) for n in range(3)])
        uow.outbox.add([OutboxMessage("t", 1, {"n": 3}, T0 + timedelta(hours=1))])
        assert uow.outbox.oldest_pending_age(T0 + timedelta(minutes=5)) == 300.0
        uow.outbox.mark_published([1, 2, 3], T0)
        uow.commit()
    with uow_factory() as uow:
        assert [e.id for e in uow.outbox.unpublished(10)] == [4]
        assert [e.id for e in uow.outbox.unpublished(10, redeliver_before=T0)] == [4]
        again = uow.outbox.unpublished(10, redeliver_before=T0 + timedelta(seconds=1))
        assert [e.id for e in again] == [1, 2, 3, 4]
        assert (again[0].published_at, again[0].attempts, again[0].completed_at) == (T0, 1, None)
        both = uow.outbox.unpublished(
            10, created_before=T0 + timedelta(hours=1), redeliver_before=T0 + timedelta(seconds=1)
        )
        assert [e.id for e in both] == [1, 2, 3]
        later = T0 + timedelta(days=1)
        assert [e.id for e in uow.outbox.unpublished(2, redeliver_before=later)] == [1, 2]

        done_at = T0 + timedelta(seconds=30)
        uow.outbox.mark_completed([1, 1], done_at)
        uow.outbox.mark_completed([1], done_at + timedelta(minutes=1))
        uow.outbox.mark_completed([], done_at)
        uow.outbox.mark_completed([10_000], done_at)
        uow.outbox.mark_completed([4], done_at)
        assert uow.outbox.backlog() == 2
        assert uow.outbox.unpublished(10) == []
        assert [e.id for e in uow.outbox.unpublished(10, redeliver_before=later)] == [2, 3]
        uow.outbox.mark_published([2], T0 + timedelta(minutes=1))
        due = uow.outbox.unpublished(10, redeliver_before=T0 + timedelta(seconds=30))
        assert [e.id for e in due] == [3]
        uow.commit()
    assert db.outbox[0].completed_at == done_at
    assert (db.outbox[3].completed_at, db.outbox[3].published_at) == (done_at, None)
    assert (db.outbox[1].attempts, db.outbox[1].completed_at) == (2, None)
    with uow_factory() as uow:
        assert uow.outbox.oldest_pending_age(T0 + timedelta(hours=1)) == 3600.0
        assert uow.outbox.oldest_pending_age(T0 - timedelta(hours=1)) == 0.0
        uow.outbox.mark_completed([2, 3], done_at)
        uow.commit()
    with uow_factory() as uow:
        assert uow.outbox.backlog() == 0
        assert uow.outbox.oldest_pending_age(later) is None
        assert uow.outbox.unpublished(10, redeliver_before=later + timedelta(days=365)) == []


def test_event_dedupe_keeps_the_transaction(uow_factory: InMemoryUnitOfWorkFactory) -> None:
    with uow_factory() as uow:
        assert uow.events.record("carrier", "e1", None, T0)
        assert not uow.events.record("carrier", "e1", None, T0)
        assert uow.events.record("payment", "e1", None, T0)
        uow.outbox.add([OutboxMessage("t", 1, {}, T0)])
        uow.commit()
    with uow_factory() as uow:
        assert not uow.events.record("carrier", "e1", 1, T0)
        assert uow.events.record("carrier", "e2", 1, T0)
        assert uow.outbox.backlog() == 1
        uow.rollback()
        assert uow.events.record("carrier", "e2", 1, T0)  # the rollback forgot it


def _letter(event_id: str | None, **fields: Any) -> DeadLetter:
    values: dict[str, Any] = {
        "source": "carrier",
        "event_id": event_id,
        "envelope": {"tracking_no": "SF404"},
        "reason": "no case",
        "code": "not_found",
        "received_at": T0,
    }
    values.update(fields)
    return DeadLetter(**values)


def test_dead_letters(uow_factory: InMemoryUnitOfWorkFactory) -> None:
    with uow_factory() as uow:
        ids = [uow.events.dead_letter(_letter(f"e{n}")) for n in range(3)]
        anonymous = [uow.events.dead_letter(_letter(None)) for _ in range(2)]
        again = _letter("e0", reason="still no case", code="not_allowed", envelope={"x": 1})
        assert uow.events.dead_letter(again) == ids[0] == again.id
        uow.commit()
    assert len(set(anonymous)) == 2

    with uow_factory() as uow:
        first = uow.events.get_dead_letter(ids[0])
        assert first is not None
        assert (first.attempts, first.reason, first.code, first.envelope) == (
            2,
            "still no case",
            "not_allowed",
            {"x": 1},
        )
        assert first.received_at == T0
        assert uow.events.get_dead_letter(999) is None
        assert [d.id for d in uow.events.dead_letters()] == [*ids, *anonymous]
        assert [d.id for d in uow.events.dead_letters(after_id=ids[0], limit=2)] == ids[1:3]

        uow.events.resolve_dead_letter(ids[1], DeadLetterStatus.DISCARDED, T0)
        with pytest.raises(KeyError):
            uow.events.resolve_dead_letter(999, DeadLetterStatus.DISCARDED, T0)
        uow.commit()

    with uow_factory() as uow:
        assert ids[1] not in [d.id for d in uow.events.dead_letters()]
        discarded = uow.events.dead_letters(DeadLetterStatus.DISCARDED)
        assert [(d.id, d.resolved_at) for d in discarded] == [(ids[1], T0)]
        assert len(uow.events.dead_letters(None)) == 5
        uow.events.dead_letter(_letter("e1"))  # a redelivery counts, the status stays
        stored = uow.events.get_dead_letter(ids[1])
        assert stored is not None and (stored.status, stored.attempts) == (
            DeadLetterStatus.DISCARDED,
            2,
        )
        uow.events.resolve_dead_letter(ids[1], DeadLetterStatus.OPEN, T0)
        reopened = uow.events.get_dead_letter(ids[1])
        assert reopened is not None and reopened.resolved_at is None
