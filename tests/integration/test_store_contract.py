"""The store contract: one suite run against the in-memory, SQLite and PostgreSQL stores (the
``backend`` fixture below). Parcel lookups, timer claims, the outbox relay's reads, inbound event
dedupe and dead letters. What only one implementation has (indexes, migrations, concurrent
transactions) is tested beside it: ``test_sql_runtime.py``, ``test_sql_stores.py``."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from persistence.mappers import outbox_entry_from_row
from persistence.tables import cases, outbox, outbox_retries
from persistence.unit_of_work import SqlUnitOfWorkFactory
from workflow.errors import Conflict
from workflow.memory import InMemoryDatabase, InMemoryUnitOfWorkFactory
from workflow.model import (
    Case,
    DeadLetter,
    DeadLetterStatus,
    OutboxEntry,
    OutboxMessage,
    Payment,
    Timer,
    TimerStatus,
    TransitionRecord,
)
from workflow.orders import Order, OrderGift, OrderLine, account
from workflow.ports import UnitOfWorkFactory
from workflow.queries import CaseQuery, CaseSort, Cursor, Party, Period, sort_key
from workflow.states import CaseState, CaseType

from .conftest import postgres_param

T0 = datetime(2026, 11, 20, 2, 0, tzinfo=UTC)
SHANGHAI = timezone(timedelta(hours=8))

NewCase = Callable[..., Case]
OutboxRows = Callable[[], list[OutboxEntry]]


@pytest.fixture(params=[pytest.param("memory", id="memory"), "sqlite", postgres_param()])
def backend(request: pytest.FixtureRequest) -> str:
    """Overrides the SQL backends of ``conftest.py`` with the in-memory stores as a third."""
    return str(request.param)


@pytest.fixture
def memory_db() -> InMemoryDatabase:
    return InMemoryDatabase()


@pytest.fixture
def sql_engine(backend: str, request: pytest.FixtureRequest) -> Engine | None:
    """The SQL backends' engine (a fresh migrated database); None for the in-memory stores."""
    if backend == "memory":
        return None
    engine: Engine = request.getfixturevalue("engine")
    return engine


@pytest.fixture
def uow_factory(sql_engine: Engine | None, memory_db: InMemoryDatabase) -> UnitOfWorkFactory:
    if sql_engine is None:
        return InMemoryUnitOfWorkFactory(memory_db)
    return SqlUnitOfWorkFactory(sql_engine)


@pytest.fixture
def outbox_rows(sql_engine: Engine | None, memory_db: InMemoryDatabase) -> OutboxRows:
    """Every outbox row as stored, by id (published and completed ones included)."""

    def rows() -> list[OutboxEntry]:
        if sql_engine is None:
            return list(memory_db.outbox)
        with sql_engine.connect() as connection:
            found = connection.execute(sa.select(outbox).order_by(outbox.c.id))
            return [outbox_entry_from_row(row) for row in found]

    return rows


def test_the_factory_makes_units_of_work_that_fit_the_port(uow_factory: UnitOfWorkFactory) -> None:
    factory: UnitOfWorkFactory = uow_factory
    with factory() as uow:
        assert uow.events.dead_letters() == []


def _stored(uow_factory: UnitOfWorkFactory, *new: Case) -> list[int]:
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


def _armed(uow_factory: UnitOfWorkFactory, new_case: NewCase, due: list[datetime]) -> list[Timer]:
    """One case per timer (a case has one live timer), armed and committed."""
    with uow_factory() as uow:
        armed = []
        for n, due_at in enumerate(due):
            case_id = uow.cases.add(new_case(order_id=f"o-{n}"))
            timer = _timer(case_id, due_at)
            uow.timers.arm(timer)
            armed.append(timer)
        uow.commit()
    return armed


def _ids(timers: list[Timer]) -> list[int]:
    return [t.id or 0 for t in timers]


def _messages(case_id: int, count: int, created_at: datetime = T0) -> list[OutboxMessage]:
    return [OutboxMessage("case.event", case_id, {"n": n}, created_at) for n in range(count)]


def _letter(event_id: str | None, **fields: object) -> DeadLetter:
    values: dict[str, object] = {
        "source": "carrier",
        "event_id": event_id,
        "envelope": {"tracking_no": "SF404", "说明": "签收"},
        "reason": "no case has parcel SF404",
        "code": "not_found",
        "received_at": T0,
    }
    values.update(fields)
    return DeadLetter(**values)  # type: ignore[arg-type]


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


# -- cases by reference ---


def test_by_reference_finds_cases_by_order_and_parcel(
    uow_factory: UnitOfWorkFactory, new_case: NewCase, sql_engine: Engine | None
) -> None:
    first, second, ended, other_order = _stored(
        uow_factory,
        new_case(skus=("a",), details={"return_tracking_no": "SF100"}),
        new_case(skus=("b",)),
        new_case(skus=("c",), state=CaseState.CLOSED, details={"return_tracking_no": "SF300"}),
        new_case(order_id="o-2"),
    )
    with uow_factory() as uow:
        case = uow.cases.get(second)
        assert case is not None
        case.details["return_tracking_no"] = "SF200"
        case.details["outbound_tracking_no"] = "JD200"
        case.version += 1
        uow.cases.save(case, case.version - 1)  # a miss: Conflict by the commit
        uow.commit()

    with uow_factory() as uow:
        # The order's open cases, newest first; the closed one is left out.
        assert [c.id for c in uow.cases.by_reference(order_id="o-1")] == [second, first]
        assert [c.id for c in uow.cases.by_reference(order_id="o-2")] == [other_order]
        assert uow.cases.by_reference(order_id="o-404") == []
        # A parcel names its case whatever its state, by either leg.
        assert [c.id for c in uow.cases.by_reference(tracking_no="SF100")] == [first]
        assert [c.id for c in uow.cases.by_reference(tracking_no="SF200")] == [second]
        assert [c.id for c in uow.cases.by_reference(tracking_no="JD200")] == [second]
        assert [c.id for c in uow.cases.by_reference(tracking_no="SF300")] == [ended]
        assert uow.cases.by_reference(tracking_no="SF404") == []
        both = uow.cases.by_reference(order_id="o-1", tracking_no="JD200")
        assert [c.id for c in both] == [second]
        assert uow.cases.by_reference(order_id="o-2", tracking_no="JD200") == []
        found = uow.cases.by_reference(tracking_no="JD200")[0]
        assert found.details["outbound_tracking_no"] == "JD200"
        with pytest.raises(ValueError):
            uow.cases.by_reference()

    # The columns follow details: a changed number moves, a removed one is cleared.
    with uow_factory() as uow:
        case = uow.cases.get(second)
        assert case is not None
        case.details["return_tracking_no"] = "SF201"
        del case.details["outbound_tracking_no"]
        case.version += 1
        uow.cases.save(case, case.version - 1)  # a miss: Conflict by the commit
        uow.commit()
    with uow_factory() as uow:
        assert uow.cases.by_reference(tracking_no="SF200") == []
        assert uow.cases.by_reference(tracking_no="JD200") == []
        assert [c.id for c in uow.cases.by_reference(tracking_no="SF201")] == [second]
    if sql_engine is not None:
        # (the SQL stores keep the numbers in indexed columns of their own)
        with sql_engine.connect() as connection:
            row = connection.execute(
                sa.select(cases.c.return_tracking_no, cases.c.outbound_tracking_no).where(
                    cases.c.id == second
                )
            ).one()
        assert tuple(row) == ("SF201", None)


# -- timers ---


def test_claim_due_takes_the_oldest_due_timers(
    uow_factory: UnitOfWorkFactory, new_case: NewCase
) -> None:
    later, early, not_due, middle = _armed(
        uow_factory,
        new_case,
        [
            T0 + timedelta(minutes=3),
            T0 + timedelta(minutes=1),
            T0 + timedelta(hours=1),
            # 10:02 in Shanghai is 02:02 UTC: ordered by instant.
            datetime(2026, 11, 20, 10, 2, tzinfo=SHANGHAI),
        ],
    )
    as_of = T0 + timedelta(minutes=10)
    with uow_factory() as uow:
        claimed = uow.timers.claim_due(as_of, 2, "sweeper-1", as_of - timedelta(minutes=5))
        assert _ids(claimed) == _ids([early, middle])
        assert all(
            (t.status, t.claimed_at, t.claimed_by) == (TimerStatus.CLAIMED, as_of, "sweeper-1")
            for t in claimed
        )
        assert claimed[0].claimed_at is not None and claimed[0].claimed_at.tzinfo is UTC
        rest = uow.timers.claim_due(as_of, 10, "sweeper-1", as_of - timedelta(minutes=5))
        assert _ids(rest) == _ids([later])
        uow.commit()

    with uow_factory() as uow:
        # Nothing left to claim: the claims are fresh, the last timer is not due.
        assert uow.timers.claim_due(as_of, 10, "sweeper-2", as_of - timedelta(minutes=5)) == []
        # due() lists pending timers only; a claimed timer is still the case's live one.
        assert uow.timers.due(as_of, 10) == []
        live = uow.timers.pending(early.case_id)
        assert live is not None and live.status is TimerStatus.CLAIMED
        assert live.claimed_by == "sweeper-1"
        stored = uow.timers.get(not_due.id or 0)
        assert stored is not None and stored.status is TimerStatus.PENDING
        assert stored.claimed_at is None


def test_a_stale_claim_is_taken_over(uow_factory: UnitOfWorkFactory, new_case: NewCase) -> None:
    [timer] = _armed(uow_factory, new_case, [T0])
    with uow_factory() as uow:
        assert _ids(uow.timers.claim_due(T0, 10, "dead", T0 - timedelta(minutes=5))) == _ids(
            [timer]
        )
        uow.commit()

    later = T0 + timedelta(minutes=5)
    with uow_factory() as uow:
        # A claim exactly as old as the bound is not stale yet.
        assert uow.timers.claim_due(later, 10, "alive", T0) == []
        [again] = uow.timers.claim_due(later, 10, "alive", T0 + timedelta(seconds=1))
        uow.commit()
    assert (again.id, again.claimed_by, again.claimed_at) == (timer.id, "alive", later)
    with uow_factory() as uow:
        stored = uow.timers.get(timer.id or 0)
        assert stored is not None and (stored.claimed_by, stored.claimed_at) == ("alive", later)


def test_a_claim_rolled_back_leaves_the_timer_pending(
    uow_factory: UnitOfWorkFactory, new_case: NewCase
) -> None:
    [timer] = _armed(uow_factory, new_case, [T0])
    with uow_factory() as uow:
        assert len(uow.timers.claim_due(T0, 10, "s", T0)) == 1
    with uow_factory() as uow:
        assert _ids(uow.timers.claim_due(T0, 10, "s", T0)) == _ids([timer])


def test_claimed_timers_finish_and_report_their_lateness(
    uow_factory: UnitOfWorkFactory, new_case: NewCase
) -> None:
    fired, stale, disarmed = _armed(uow_factory, new_case, [T0, T0, T0])
    as_of = T0 + timedelta(seconds=2)
    with uow_factory() as uow:
        assert len(uow.timers.claim_due(as_of, 10, "s", T0)) == 3
        uow.commit()
    with uow_factory() as uow:
        uow.timers.mark_fired(fired, T0 + timedelta(seconds=2, milliseconds=250))
        assert uow.timers.cancel_stale(stale, T0 + timedelta(seconds=3))
        uow.timers.disarm(disarmed.case_id)  # the case moved on while the timer was claimed
        uow.commit()
    with uow_factory() as uow:
        done = uow.timers.get(fired.id or 0)
        assert done is not None and done.status is TimerStatus.FIRED
        assert done.claimed_by == "s"
        dropped = uow.timers.get(stale.id or 0)
        assert dropped is not None and dropped.status is TimerStatus.CANCELLED
        cancelled = uow.timers.get(disarmed.id or 0)
        assert cancelled is not None and cancelled.status is TimerStatus.CANCELLED
        assert uow.timers.pending(fired.case_id) is None
        assert uow.timers.pending(disarmed.case_id) is None
        # Only fired timers count, since the given time.
        assert uow.timers.lateness(T0) == [2_250]
        assert uow.timers.lateness(T0 + timedelta(seconds=2, milliseconds=250)) == [2_250]
        assert uow.timers.lateness(T0 + timedelta(seconds=3)) == []
        # The slot is free again: the case can get its next deadline.
        uow.timers.arm(_timer(fired.case_id, T0 + timedelta(days=1), version=2))
        uow.commit()


def test_claim_due_reclaim_and_finish(uow_factory: UnitOfWorkFactory, new_case: NewCase) -> None:
    later, early, not_due = _armed(
        uow_factory,
        new_case,
        [T0 + timedelta(minutes=3), T0 + timedelta(minutes=1), T0 + timedelta(hours=1)],
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
    uow_factory: UnitOfWorkFactory,
    new_case: NewCase,
) -> None:
    _armed(uow_factory, new_case, [T0 + timedelta(seconds=n) for n in range(10)])
    batches = []
    for n in range(4):
        with uow_factory() as uow:
            batches.append(_ids(uow.timers.claim_due(T0 + timedelta(minutes=1), 3, f"s{n}", T0)))
            uow.commit()
    every = [i for batch in batches for i in batch]
    assert [len(b) for b in batches] == [3, 3, 3, 1]
    assert len(every) == len(set(every)) == 10


# -- outbox ---


def test_the_relay_reads_marks_and_counts(
    uow_factory: UnitOfWorkFactory, new_case: NewCase, outbox_rows: OutboxRows
) -> None:
    [case_id] = _stored(uow_factory, new_case())
    with uow_factory() as uow:
        uow.outbox.add(_messages(case_id, 3))
        uow.outbox.add([OutboxMessage("late", case_id, {"注": "稍后"}, T0 + timedelta(hours=1))])
        assert uow.outbox.backlog() == 4
        uow.commit()

    with uow_factory() as uow:
        waiting = uow.outbox.unpublished(10)
        assert [e.payload for e in waiting] == [{"n": 0}, {"n": 1}, {"n": 2}, {"注": "稍后"}]
        assert [e.id for e in waiting] == sorted(e.id for e in waiting)
        assert all(e.published_at is None and e.attempts == 0 for e in waiting)
        assert waiting[0].created_at == T0 and waiting[0].created_at.tzinfo is UTC
        assert [e.id for e in uow.outbox.unpublished(2)] == [e.id for e in waiting[:2]]
        # created_before is strict: rows written at that instant wait for the next read.
        before = uow.outbox.unpublished(10, created_before=T0 + timedelta(hours=1))
        assert [e.id for e in before] == [e.id for e in waiting[:3]]
        assert uow.outbox.unpublished(10, created_before=T0) == []

        published_at = datetime(2026, 11, 20, 10, 5, tzinfo=SHANGHAI)
        uow.outbox.mark_published([waiting[0].id, waiting[2].id, waiting[0].id], published_at)
        uow.outbox.mark_published([], published_at)
        # Published is not finished: the rows stay pending until a consumer completes them.
        assert uow.outbox.backlog() == 4
        assert [e.id for e in uow.outbox.unpublished(10)] == [waiting[1].id, waiting[3].id]
        uow.commit()

    rows = {r.id: r for r in outbox_rows()}
    assert rows[waiting[0].id].published_at == published_at
    assert rows[waiting[0].id].attempts == 1  # once, although named twice
    assert (rows[waiting[1].id].published_at, rows[waiting[1].id].attempts) == (None, 0)
    assert all(row.completed_at is None for row in rows.values())
    with uow_factory() as uow:
        assert uow.outbox.backlog() == 4


def test_a_published_row_comes_back_until_it_is_completed(
    uow_factory: UnitOfWorkFactory, new_case: NewCase, outbox_rows: OutboxRows
) -> None:
    [case_id] = _stored(uow_factory, new_case())
    with uow_factory() as uow:
        uow.outbox.add(_messages(case_id, 3))
        uow.outbox.add(_messages(case_id, 1, created_at=T0 + timedelta(hours=1)))
        uow.commit()
    with uow_factory() as uow:
        first, second, third, late = uow.outbox.unpublished(10)
        assert uow.outbox.oldest_pending_age(T0 + timedelta(minutes=5)) == 300.0
        uow.outbox.mark_published([first.id, second.id, third.id], T0)
        uow.commit()

    with uow_factory() as uow:
        # Without redeliver_before only never-published rows, as before.
        assert [e.id for e in uow.outbox.unpublished(10)] == [late.id]
        # redeliver_before is strict: rows published at that instant are not due yet.
        assert [e.id for e in uow.outbox.unpublished(10, redeliver_before=T0)] == [late.id]
        again = uow.outbox.unpublished(10, redeliver_before=T0 + timedelta(seconds=1))
        assert [e.id for e in again] == [first.id, second.id, third.id, late.id]
        assert [(e.published_at, e.attempts, e.completed_at) for e in again[:1]] == [(T0, 1, None)]
        assert again[0].published_at is not None and again[0].published_at.tzinfo is UTC
        both = uow.outbox.unpublished(
            10, created_before=T0 + timedelta(hours=1), redeliver_before=T0 + timedelta(seconds=1)
        )
        assert [e.id for e in both] == [first.id, second.id, third.id]
        assert [
            e.id for e in uow.outbox.unpublished(2, redeliver_before=T0 + timedelta(days=1))
        ] == [
            first.id,
            second.id,
        ]

        # A consumer finished the first; a second completion (a redelivery) keeps the first time.
        done_at = datetime(2026, 11, 20, 10, 0, 30, tzinfo=SHANGHAI)  # 02:00:30 UTC
        uow.outbox.mark_completed([first.id, first.id], done_at)
        uow.outbox.mark_completed([first.id], done_at + timedelta(minutes=1))
        # (and in a list: one statement for them all on PostgreSQL)
        uow.outbox.mark_completed([10_001, first.id], done_at + timedelta(minutes=2))
        uow.outbox.mark_completed([], done_at)
        uow.outbox.mark_completed([10_000], done_at)  # unknown: ignored
        # A row completed before it was ever published does not go out either.
        uow.outbox.mark_completed([late.id], done_at)
        assert uow.outbox.backlog() == 2
        assert uow.outbox.unpublished(10) == []
        later = T0 + timedelta(days=1)
        assert [e.id for e in uow.outbox.unpublished(10, redeliver_before=later)] == [
            second.id,
            third.id,
        ]
        # The second is published again a minute later: it is not due while the third is.
        uow.outbox.mark_published([second.id], T0 + timedelta(minutes=1))
        due = uow.outbox.unpublished(10, redeliver_before=T0 + timedelta(seconds=30))
        assert [e.id for e in due] == [third.id]
        uow.commit()

    rows = {r.id: r for r in outbox_rows()}
    assert rows[first.id].completed_at == done_at
    assert rows[late.id].completed_at == done_at and rows[late.id].published_at is None
    assert (rows[second.id].attempts, rows[second.id].completed_at) == (2, None)
    with uow_factory() as uow:
        assert uow.outbox.backlog() == 2
        [entry] = uow.outbox.unpublished(1, redeliver_before=later)
        assert entry.id == second.id and entry.completed_at is None
        # Ages are measured from created_at, whatever zone the caller's clock is in.
        assert uow.outbox.oldest_pending_age(datetime(2026, 11, 20, 11, tzinfo=SHANGHAI)) == 3600.0
        assert uow.outbox.oldest_pending_age(T0 - timedelta(hours=1)) == 0.0  # never negative
        uow.outbox.mark_completed([second.id, third.id], done_at)
        uow.commit()
    with uow_factory() as uow:
        assert uow.outbox.backlog() == 0
        assert uow.outbox.oldest_pending_age(later) is None
        assert uow.outbox.unpublished(10, redeliver_before=later) == []
        completed = uow.outbox.unpublished(10, redeliver_before=later + timedelta(days=365))
        assert completed == []


def test_a_parked_row_leaves_the_relay_until_retried_and_the_retry_is_recorded(
    uow_factory: UnitOfWorkFactory,
    new_case: NewCase,
    outbox_rows: OutboxRows,
    sql_engine: Engine | None,
    memory_db: InMemoryDatabase,
) -> None:
    # given three rows published and lost
    [case_id] = _stored(uow_factory, new_case())
    with uow_factory() as uow:
        uow.outbox.add(_messages(case_id, 3))
        uow.commit()
    later = T0 + timedelta(days=1)
    with uow_factory() as uow:
        first, second, third = uow.outbox.unpublished(10)
        uow.outbox.mark_published([first.id, second.id, third.id], T0)
        uow.commit()

    # when the relay parks the first two (twice: the second call changes nothing)
    parked_at = T0 + timedelta(minutes=10)
    with uow_factory() as uow:
        uow.outbox.park([first.id, second.id, second.id], parked_at)
        uow.outbox.park([first.id], parked_at + timedelta(minutes=1))
        uow.outbox.park([], parked_at)
        uow.commit()

    # then they are neither due nor pending, and are listed as parked, by id
    with uow_factory() as uow:
        assert [e.id for e in uow.outbox.unpublished(10, redeliver_before=later)] == [third.id]
        assert uow.outbox.backlog() == 1
        assert uow.outbox.oldest_pending_age(T0) == 0.0
        listed = uow.outbox.parked(10)
        assert [(e.id, e.parked_at, e.attempts) for e in listed] == [
            (first.id, parked_at, 1),
            (second.id, parked_at, 1),
        ]
        assert [e.id for e in uow.outbox.parked(10, after_id=first.id)] == [second.id]
        assert [e.id for e in uow.outbox.parked(1)] == [first.id]
        # a consumer that finishes a parked row after all completes it
        uow.outbox.mark_completed([second.id], parked_at)
        # the pending third is not parked, so it cannot be retried; nor can unknown ids
        retried_at = T0 + timedelta(hours=1)
        assert uow.outbox.retry(third.id, retried_at, "admin:ops", "why") is None
        assert uow.outbox.retry(10_000, retried_at, "admin:ops", "why") is None
        assert uow.outbox.retry(second.id, retried_at, "admin:ops", "completed") is None
        uow.commit()

    # when an operator retries the first
    with uow_factory() as uow:
        before = uow.outbox.retry(first.id, retried_at, "admin:ops", "carrier fixed")
        uow.commit()

    # then it is a fresh row again: never published, no attempts, first in the relay's read
    assert before is not None and (before.id, before.attempts) == (first.id, 1)
    assert before.parked_at == parked_at
    rows = {r.id: r for r in outbox_rows()}
    fresh = rows[first.id]
    assert (fresh.parked_at, fresh.published_at, fresh.attempts) == (None, None, 0)
    assert rows[second.id].completed_at == parked_at
    with uow_factory() as uow:
        assert [e.id for e in uow.outbox.unpublished(10)] == [first.id]
        assert uow.outbox.parked(10) == []
        assert uow.outbox.backlog() == 2
        # a second retry of the same row finds nothing parked
        assert uow.outbox.retry(first.id, retried_at, "admin:ops", "again") is None
    # and the retry is on record: who, when, why, and what the row had been through
    expected = (first.id, "admin:ops", retried_at, "carrier fixed", 1, parked_at)
    if sql_engine is None:
        assert memory_db.outbox_retries == [expected]
    else:
        with sql_engine.connect() as connection:
            records = connection.execute(
                sa.select(
                    outbox_retries.c.outbox_id,
                    outbox_retries.c.retried_by,
                    outbox_retries.c.retried_at,
                    outbox_retries.c.reason,
                    outbox_retries.c.attempts,
                    outbox_retries.c.parked_at,
                )
            ).all()
        assert [tuple(record) for record in records] == [expected]


# -- inbound events ---


def test_a_seen_event_is_refused_without_spoiling_the_transaction(
    uow_factory: UnitOfWorkFactory, new_case: NewCase
) -> None:
    [case_id] = _stored(uow_factory, new_case())
    with uow_factory() as uow:
        assert uow.events.record("carrier", "evt-1", case_id, T0)
        assert not uow.events.record("carrier", "evt-1", case_id, T0)
        # Same id from another source, and an event naming no case, are new.
        assert uow.events.record("payment", "evt-1", None, T0)
        uow.outbox.add(_messages(case_id, 1))
        uow.commit()

    with uow_factory() as uow:
        assert not uow.events.record("carrier", "evt-1", case_id, T0 + timedelta(hours=1))
        # The transaction goes on after the duplicate: these writes commit.
        assert uow.events.record("carrier", "evt-2", case_id, T0)
        uow.outbox.add(_messages(case_id, 1))
        uow.commit()
    with uow_factory() as uow:
        assert uow.outbox.backlog() == 2
        assert not uow.events.record("carrier", "evt-2", case_id, T0)


def test_a_rolled_back_event_can_be_recorded_again(uow_factory: UnitOfWorkFactory) -> None:
    with uow_factory() as uow:
        assert uow.events.record("carrier", "evt-1", None, T0)
    with uow_factory() as uow:
        assert uow.events.record("carrier", "evt-1", None, T0)
        uow.rollback()
        assert uow.events.record("carrier", "evt-1", None, T0)
        uow.commit()


# -- dead letters ---


def test_dead_letters_round_trip_and_redeliveries_count(
    uow_factory: UnitOfWorkFactory,
) -> None:
    letter = _letter("evt-1")
    with uow_factory() as uow:
        letter_id = uow.events.dead_letter(letter)
        assert letter.id == letter_id
        uow.commit()
    with uow_factory() as uow:
        stored = uow.events.get_dead_letter(letter_id)
        assert stored == letter
        assert stored is not None and stored.received_at.tzinfo is UTC
        assert uow.events.get_dead_letter(10_000) is None

    redelivered = _letter(
        "evt-1",
        envelope={"tracking_no": "SF404", "attempt": 2},
        reason="still no case",
        code="not_allowed",
        received_at=T0 + timedelta(hours=1),
    )
    with uow_factory() as uow:
        assert uow.events.dead_letter(redelivered) == letter_id == redelivered.id
        assert uow.events.dead_letter(_letter("evt-1", source="payment")) != letter_id
        uow.commit()
    with uow_factory() as uow:
        again = uow.events.get_dead_letter(letter_id)
        assert again is not None
        assert (again.attempts, again.reason, again.code) == (2, "still no case", "not_allowed")
        assert again.envelope == {"tracking_no": "SF404", "attempt": 2}
        assert again.received_at == T0  # the first delivery's
        assert len(uow.events.dead_letters(status=None)) == 2


def test_dead_letters_without_an_event_id_never_merge(uow_factory: UnitOfWorkFactory) -> None:
    with uow_factory() as uow:
        first = uow.events.dead_letter(_letter(None))
        second = uow.events.dead_letter(_letter(None))
        uow.commit()
    assert first != second
    with uow_factory() as uow:
        assert [d.id for d in uow.events.dead_letters()] == [first, second]
        assert all(d.attempts == 1 and d.event_id is None for d in uow.events.dead_letters())


def test_dead_letters_list_page_and_resolve(uow_factory: UnitOfWorkFactory) -> None:
    with uow_factory() as uow:
        ids = [uow.events.dead_letter(_letter(f"evt-{n}")) for n in range(5)]
        uow.commit()
    with uow_factory() as uow:
        assert [d.id for d in uow.events.dead_letters()] == ids
        assert [d.id for d in uow.events.dead_letters(limit=2)] == ids[:2]
        assert [d.id for d in uow.events.dead_letters(after_id=ids[1], limit=2)] == ids[2:4]
        assert uow.events.dead_letters(after_id=ids[-1]) == []

        at = datetime(2026, 11, 21, 9, 0, tzinfo=SHANGHAI)
        uow.events.resolve_dead_letter(ids[1], DeadLetterStatus.DISCARDED, at)
        uow.events.resolve_dead_letter(ids[3], DeadLetterStatus.REPLAYED, at)
        with pytest.raises(KeyError):
            uow.events.resolve_dead_letter(10_000, DeadLetterStatus.DISCARDED, at)
        uow.commit()

    with uow_factory() as uow:
        assert [d.id for d in uow.events.dead_letters()] == [ids[0], ids[2], ids[4]]
        assert [d.id for d in uow.events.dead_letters(DeadLetterStatus.DISCARDED)] == [ids[1]]
        assert [d.id for d in uow.events.dead_letters(DeadLetterStatus.REPLAYED)] == [ids[3]]
        assert [d.id for d in uow.events.dead_letters(None)] == ids
        discarded = uow.events.get_dead_letter(ids[1])
        assert discarded is not None
        assert (discarded.status, discarded.resolved_at) == (DeadLetterStatus.DISCARDED, at)

        # A redelivery of a discarded event counts, but does not reopen it.
        uow.events.dead_letter(_letter("evt-1"))
        after = uow.events.get_dead_letter(ids[1])
        assert after is not None and (after.status, after.attempts) == (
            DeadLetterStatus.DISCARDED,
            2,
        )
        # Reopening clears the resolution time.
        uow.events.resolve_dead_letter(ids[1], DeadLetterStatus.OPEN, at)
        reopened = uow.events.get_dead_letter(ids[1])
        assert reopened is not None and reopened.resolved_at is None
        assert [d.id for d in uow.events.dead_letters()] == [ids[0], ids[1], ids[2], ids[4]]


# -- cases, log and timers (moved from test_sql_stores.py) ---


def _order(order_id: str = "o-1", delivered_at: datetime | None = None) -> Order:
    return Order(
        order_id=order_id,
        buyer_id="b-1",
        merchant_id="m-1",
        payment=Payment("wechat_pay", 30_000, datetime(2026, 11, 1, tzinfo=UTC)),
        lines=(OrderLine("sku-1", 3, 10_000, "clothing"), OrderLine("sku-2", 1, 5_000, "home")),
        gifts=(OrderGift("gift-1", 1, 500),),
        delivered_at=delivered_at,
    )


def test_an_order_of_record_is_stored_whole_and_only_its_delivery_time_changes(
    uow_factory: UnitOfWorkFactory,
) -> None:
    at = datetime(2026, 11, 2, tzinfo=UTC)
    with uow_factory() as uow:
        assert uow.orders.get("o-1") is None and uow.orders.lock("o-1") is None
        uow.orders.put(_order(), at)
        assert uow.orders.get("o-1") == _order()
        uow.commit()
    delivered = datetime(2026, 11, 3, 4, 5, 6, 789_000, tzinfo=UTC)
    with uow_factory() as uow:
        assert uow.orders.lock("o-1") == _order()
        assert uow.orders.lock("o-1") == _order()  # re-entrant for its own transaction
        uow.orders.put(_order(delivered_at=delivered), at)
        uow.commit()
    with uow_factory() as uow:
        assert uow.orders.get("o-1") == _order(delivered_at=delivered)
        assert uow.orders.get("o-2") is None


def test_cases_of_one_order_may_share_a_line(
    uow_factory: UnitOfWorkFactory, new_case: NewCase
) -> None:
    """Units, not items, are claimed now (the service checks them under the order's lock):
    the store takes a second open case of the same sku."""
    first, second = _stored(uow_factory, new_case(skus=("sku-1",)), new_case(skus=("sku-1",)))
    with uow_factory() as uow:
        assert {c.id for c in uow.cases.of_orders(["o-1"])["o-1"]} == {first, second}


def test_a_submission_key_creates_one_case(
    uow_factory: UnitOfWorkFactory, new_case: NewCase
) -> None:
    [first] = _stored(uow_factory, new_case(submission_key="k-1"))
    with uow_factory() as uow:
        with pytest.raises(Conflict, match=f"created case {first}"):
            uow.cases.add(new_case(order_id="o-2", submission_key="k-1"))
        found = uow.cases.by_submission_key("k-1")
        assert found is not None and found.id == first
        assert uow.cases.by_submission_key("k-2") is None


def test_an_idempotency_key_logs_once(uow_factory: UnitOfWorkFactory, new_case: NewCase) -> None:
    [case_id] = _stored(uow_factory, new_case())
    with uow_factory() as uow:
        uow.log.append([_record(case_id, 2, idempotency_key="call-1")])
        # The same call appending its follow-up separately is still one call.
        uow.log.append([_record(case_id, 3, "start_refund", idempotency_key="call-1")])
        uow.commit()
    with uow_factory() as uow, pytest.raises(Conflict, match="idempotency key call-1"):
        uow.log.append([_record(case_id, 4, idempotency_key="call-1")])
    with uow_factory() as uow:
        assert [r.seq for r in uow.log.by_key(case_id, "call-1")] == [2, 3]


def test_a_seq_logs_once(uow_factory: UnitOfWorkFactory, new_case: NewCase) -> None:
    [case_id] = _stored(uow_factory, new_case())
    with uow_factory() as uow:
        uow.log.append([_record(case_id, 2)])
        uow.commit()
    with uow_factory() as uow, pytest.raises(Conflict, match="already has entry"):
        uow.log.append([_record(case_id, 2, "reject", to_state=CaseState.REJECTED)])


def test_nothing_is_visible_before_commit_and_exit_rolls_back(
    uow_factory: UnitOfWorkFactory, new_case: NewCase
) -> None:
    with uow_factory() as uow:
        case_id = uow.cases.add(new_case())
        uow.orders.put(_order(), datetime(2026, 11, 2, tzinfo=UTC))
        assert uow.cases.get(case_id) is not None
    with uow_factory() as uow:
        assert uow.cases.get(case_id) is None
        assert uow.orders.get("o-1") is None


def test_an_orders_account_counts_the_cases_that_may_still_refund(
    uow_factory: UnitOfWorkFactory, new_case: NewCase
) -> None:
    """The cases of an order as ``of_orders`` reads them make its account: open ones hold
    units and pending fen, refunded ones refunded units and fen, the others nothing."""
    amounts = {
        CaseState.SUBMITTED: 100,
        CaseState.REJECTED: 200,
        CaseState.REFUNDED: 400,
        CaseState.CANCELLED: 1_000,
        CaseState.CLOSED: 2_000,
        CaseState.EXCHANGED: 3_000,
        CaseState.REPAIRED: 4_000,
    }
    built = [
        new_case(skus=("sku-1",), state=state, refund_amount=amount)
        for state, amount in amounts.items()
    ]
    _stored(uow_factory, *built, new_case(order_id="o-2", refund_amount=50_000))
    with uow_factory() as uow:
        accounted = account(_order(), uow.cases.of_orders(["o-1"])["o-1"])
    assert (accounted.pending, accounted.refunded) == (300, 400)
    line = accounted.line("sku-1")
    assert line is not None
    assert (line.open_quantity, line.refunded_quantity, line.refunded_amount) == (2, 1, 400)


def test_list_filters_and_pages_by_id(uow_factory: UnitOfWorkFactory, new_case: NewCase) -> None:
    ids = _stored(
        uow_factory,
        *(new_case(order_id=f"o-{n}", merchant_id=f"m-{n % 2}") for n in range(5)),
        new_case(order_id="o-9", state=CaseState.APPROVED, type=CaseType.REPAIR),
    )
    with uow_factory() as uow:
        listed = uow.cases.list

        assert [c.id for c in listed(CaseQuery())] == ids
        assert [c.id for c in listed(CaseQuery(merchant_id="m-0"))] == [ids[0], ids[2], ids[4]]
        assert [c.id for c in listed(CaseQuery(merchant_id="m-0", after_id=ids[0], limit=1))] == [
            ids[2]
        ]
        assert [c.id for c in listed(CaseQuery(state=CaseState.APPROVED))] == [ids[5]]
        assert [c.id for c in listed(CaseQuery(type=CaseType.REPAIR))] == [ids[5]]
        assert [c.id for c in listed(CaseQuery(order_id="o-3", buyer_id="b-1"))] == [ids[3]]
        assert listed(CaseQuery(buyer_id="b-2")) == []


def test_a_rolled_back_key_can_be_used_again(
    uow_factory: UnitOfWorkFactory, new_case: NewCase
) -> None:
    [case_id] = _stored(uow_factory, new_case())
    with uow_factory() as uow:
        uow.log.append([_record(case_id, 2, idempotency_key="call-1")])
        uow.rollback()
        uow.log.append([_record(case_id, 2, idempotency_key="call-1")])
        uow.commit()
    with uow_factory() as uow, pytest.raises(Conflict):
        uow.log.append([_record(case_id, 3, idempotency_key="call-1")])


def test_reschedule_moves_the_deadline(uow_factory: UnitOfWorkFactory, new_case: NewCase) -> None:
    [case_id] = _stored(uow_factory, new_case())
    timer = _timer(case_id, T0)
    with uow_factory() as uow:
        uow.timers.arm(timer)
        assert timer.id is not None
        uow.timers.reschedule(timer.id, T0 + timedelta(days=2), version=3)
        uow.commit()
    with uow_factory() as uow:
        assert uow.timers.due(T0 + timedelta(days=1), limit=10) == []
        moved = uow.timers.get(timer.id)
        assert moved is not None and (moved.due_at, moved.version) == (T0 + timedelta(days=2), 3)
        with pytest.raises(KeyError):
            uow.timers.reschedule(10_000, T0, version=1)


def test_a_unit_of_work_made_once_by_an_events_record_only_labels_its_keys(
    uow_factory: UnitOfWorkFactory, new_case: NewCase
) -> None:
    [case_id] = _stored(uow_factory, new_case())
    with uow_factory() as uow:
        uow.log.append([_record(case_id, 1, idempotency_key="event:sf:e-1")])
        uow.commit()
    # given a unit of work that recorded an inbound event for the case
    with uow_factory() as uow:
        assert uow.events.record("sf", "e-2", case_id, T0)
        # when its records carry a key used before, it only labels them
        uow.log.append([_record(case_id, 2, idempotency_key="event:sf:e-1")])
        uow.commit()
    with uow_factory() as uow:
        assert [r.seq for r in uow.log.by_key(case_id, "event:sf:e-1")] == [1, 2]
    # then a unit of work without such a record still refuses the key
    with uow_factory() as uow, pytest.raises(Conflict):
        uow.log.append([_record(case_id, 3, idempotency_key="event:sf:e-1")])
        uow.commit()


# -- the case queue (search) and the merchants' figures ---


def _search_all(uow_factory: UnitOfWorkFactory, query: CaseQuery, now: datetime) -> list[int]:
    """Every case ``query`` finds, page by page through the cursor of each page's last row."""
    found: list[int] = []
    with uow_factory() as uow:
        while True:
            rows = uow.cases.search(query, now)
            found += [row.case.id or 0 for row in rows]
            if len(rows) < query.limit:
                return found
            last = rows[-1]
            key = sort_key(query, last.case, last.deadline)
            query = replace(query, after=Cursor(query.sort, query.descending, key, found[-1]))


def _queue(uow_factory: UnitOfWorkFactory, new_case: NewCase) -> list[int]:
    """Six cases: four with deadlines (two due at the same instant), two without."""
    due = [T0 + timedelta(hours=5), T0 - timedelta(hours=1), None, T0 + timedelta(hours=5)]
    due += [None, T0 - timedelta(hours=3)]
    with uow_factory() as uow:
        ids = []
        for n, due_at in enumerate(due):
            case_id = uow.cases.add(
                new_case(order_id=f"o-{n}", created_at=T0 - timedelta(days=n % 3, minutes=n))
            )
            if due_at is not None:
                uow.timers.arm(_timer(case_id, due_at))
            ids.append(case_id)
        uow.commit()
    return ids


@pytest.mark.parametrize("limit", [1, 2, 50])
def test_search_sorts_by_deadline_and_pages_by_cursor(
    uow_factory: UnitOfWorkFactory, new_case: NewCase, limit: int
) -> None:
    # given cases with deadlines (two due at once) and cases without one
    a, b, c, d, e, f = _queue(uow_factory, new_case)

    # when the queue is read a page at a time, by deadline, both ways
    ascending = _search_all(uow_factory, CaseQuery(sort=CaseSort.DEADLINE, limit=limit), T0)
    query = CaseQuery(sort=CaseSort.DEADLINE, descending=True, limit=limit)
    descending = _search_all(uow_factory, query, T0)

    # then the soonest deadline comes first, ties by id, the cases without a deadline last
    assert ascending == [f, b, a, d, c, e]
    assert descending == [d, a, b, f, e, c]


def test_search_sorts_by_age_and_by_id(uow_factory: UnitOfWorkFactory, new_case: NewCase) -> None:
    # given cases submitted out of id order
    a, b, c, d, e, f = _queue(uow_factory, new_case)

    # when they are read by age and by id, a page of two at a time
    by_age = _search_all(uow_factory, CaseQuery(sort=CaseSort.AGE, limit=2), T0)
    newest = _search_all(uow_factory, CaseQuery(sort=CaseSort.AGE, descending=True, limit=2), T0)
    by_id = _search_all(uow_factory, CaseQuery(limit=4), T0)

    # then oldest submitted first (days back: c, f 2; b, e 1; a, d 0), or by id
    assert by_age == [f, c, e, b, d, a]
    assert newest == [a, d, b, e, c, f]
    assert by_id == [a, b, c, d, e, f]


def test_search_filters_deadlines_states_text_and_disputes(
    uow_factory: UnitOfWorkFactory, new_case: NewCase
) -> None:
    # given the queue, one case approved, one with a parcel, one disputed once
    a, b, c, d, e, f = _queue(uow_factory, new_case)
    with uow_factory() as uow:
        approved = uow.cases.get(c)
        assert approved is not None
        approved.state = CaseState.APPROVED
        approved.details["return_tracking_no"] = "SF777"
        approved.version = 2
        uow.cases.save(approved, 1)
        uow.log.append([_record(e, 2, "escalate", to_state=CaseState.DISPUTED)])
        uow.commit()

    def found(**fields: Any) -> list[int]:
        return _search_all(uow_factory, CaseQuery(sort=CaseSort.DEADLINE, **fields), T0)

    # then each filter keeps exactly its cases, in deadline order
    assert found(overdue=True) == [f, b]
    assert found(due_within=timedelta(hours=5)) == [f, b, a, d]
    assert found(due_within=timedelta(hours=4)) == [f, b]
    assert found(overdue=True, limit=1) == [f, b]
    assert found(states=frozenset({CaseState.APPROVED})) == [c]
    assert found(state=CaseState.SUBMITTED, states=frozenset({CaseState.APPROVED})) == [
        f, b, a, d, c, e,
    ]  # fmt: skip
    assert found(text="SF777") == [c]
    assert found(text="o-3") == [d]
    assert found(text=str(e)) == [e]
    assert found(text="b-1", merchant_id="m-1") == [f, b, a, d, c, e]
    assert found(text="nobody") == []
    assert found(disputed=True) == [e]
    assert found(disputed=False) == [f, b, a, d, c]
    assert found(overdue=True, merchant_id="m-2") == []


def test_search_rows_carry_the_deadline_and_who_it_waits_for(
    uow_factory: UnitOfWorkFactory, new_case: NewCase
) -> None:
    # given a submitted case whose review deadline is armed, and one without a deadline
    a, _, c, *_ = _queue(uow_factory, new_case)

    # when the queue is read
    with uow_factory() as uow:
        rows = {row.case.id: row for row in uow.cases.search(CaseQuery(), T0)}

    # then the row holds the pending timer; the review waits for the merchant either way
    assert rows[a].deadline is not None
    assert rows[a].deadline.due_at == T0 + timedelta(hours=5)
    assert rows[a].waits_for is Party.MERCHANT
    assert (rows[c].deadline, rows[c].waits_for) == (None, Party.MERCHANT)


def test_merchant_figures_over_a_period(uow_factory: UnitOfWorkFactory, new_case: NewCase) -> None:
    # given merchant m-1's cases in the period: approved after 2 h, auto-approved by its timer
    # after 48 h, not yet reviewed and disputed; one of m-2's; one of m-1's before the period
    def submitted(n: int, merchant: str, created_at: datetime) -> Case:
        return new_case(order_id=f"o-{n}", merchant_id=merchant, created_at=created_at)

    with uow_factory() as uow:
        approved, timed_out, disputed, _, before = (
            uow.cases.add(submitted(n, merchant, at))
            for n, (merchant, at) in enumerate(
                [
                    ("m-1", T0),
                    ("m-1", T0 + timedelta(hours=1)),
                    ("m-1", T0 + timedelta(hours=2)),
                    ("m-2", T0),
                    ("m-1", T0 - timedelta(days=1)),
                ]
            )
        )
        review = _timer(timed_out, T0 + timedelta(hours=49))
        uow.timers.arm(review)
        # deadlines that did not fire count for nothing: one cancelled, one still pending
        uow.timers.arm(_timer(approved, T0 + timedelta(hours=48)))
        uow.timers.disarm(approved)
        uow.timers.arm(_timer(disputed, T0 + timedelta(hours=50)))
        uow.commit()
    with uow_factory() as uow:
        uow.timers.mark_fired(review, T0 + timedelta(hours=49))
        uow.log.append(
            [
                _record(approved, 2, at=T0 + timedelta(hours=2)),
                _record(timed_out, 2, "auto_approve", at=T0 + timedelta(hours=49)),
                _record(
                    disputed,
                    2,
                    "escalate",
                    from_state=CaseState.REJECTED,
                    to_state=CaseState.DISPUTED,
                ),
                _record(before, 2, at=T0),
            ]
        )
        uow.commit()
    period = Period(T0, T0 + timedelta(days=7))

    # when the figures are read for all merchants and for one
    with uow_factory() as uow:
        everyone = uow.cases.merchant_figures(period)
        one = uow.cases.merchant_figures(period, "m-2")

    # then m-1 had 3 cases: 2 reviewed (median of 2 h and 48 h), 1 by its timeout, 1 disputed
    m1, m2 = everyone
    assert (m1.merchant_id, m1.cases, m1.reviewed, m1.timed_out, m1.disputed) == ("m-1", 3, 2, 1, 1)
    assert m1.median_review_seconds == 25 * 3600
    assert (m1.timeout_share, m1.dispute_rate) == (pytest.approx(1 / 3), pytest.approx(1 / 3))
    assert (m2.merchant_id, m2.cases, m2.reviewed, m2.median_review_seconds) == ("m-2", 1, 0, None)
    assert one == [m2]
