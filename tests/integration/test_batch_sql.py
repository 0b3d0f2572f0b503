"""Batches on real databases: many events, or many due timers, to one transaction with a savepoint
each, and what happens when one item or the whole transaction fails."""

from __future__ import annotations

import threading
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from config.policy import load_policy
from persistence.stores.events import SqlEventStore
from persistence.unit_of_work import SqlUnitOfWork, SqlUnitOfWorkFactory
from workflow.clock import FakeClock
from workflow.errors import Conflict
from workflow.events.ingestion import EventService, IngestStatus
from workflow.memory import InMemoryUnitOfWorkFactory
from workflow.model import Actor, Case, Timer, TimerStatus
from workflow.service import CaseService, TimerRun
from workflow.states import CaseState, Role

from .conftest import submit_with_order
from .test_events_sql import MERCHANT, NOW, application, envelope, recorded

ADMIN = Actor(Role.ADMIN, "ops")
#: Past the 48 h merchant_review deadline of a case submitted at NOW.
REVIEW_DUE = NOW + timedelta(hours=48, minutes=1)


@pytest.fixture
def kicks() -> list[int]:
    return []


@pytest.fixture
def service(uow_factory: SqlUnitOfWorkFactory, kicks: list[int]) -> CaseService:
    return CaseService(
        uow_factory, FakeClock(NOW), load_policy(), outbox_written=lambda: kicks.append(1)
    )


@pytest.fixture
def events(service: CaseService, uow_factory: SqlUnitOfWorkFactory) -> EventService:
    return EventService(service, uow_factory, service.clock)


def submitted(service: CaseService, count: int) -> list[int]:
    ids = []
    for n in range(count):
        case_id = submit_with_order(service, application(f"o-{n}")).case.id
        assert case_id is not None
        ids.append(case_id)
    return ids


def due_for_review(service: CaseService, count: int) -> list[int]:
    """``count`` submitted cases, the clock moved past their merchant_review deadlines."""
    cases = submitted(service, count)
    assert isinstance(service.clock, FakeClock)
    service.clock.set(REVIEW_DUE)
    return cases


def approve(event_id: str, case_id: int) -> dict[str, Any]:
    return envelope(event_id, "merchant.approved", case_id, data={"merchant_id": "m1"})


def triggers(service: CaseService, case_id: int) -> list[str]:
    return [record.trigger for record in service.history(case_id)]


def count(engine: Engine, sql: str) -> int:
    with engine.connect() as connection:
        return int(connection.execute(sa.text(sql)).scalar_one())


# -- savepoints ------------------------------------------------------------------------------------


def test_a_savepoint_undoes_only_its_block_and_keeps_the_transaction_usable(
    uow_factory: SqlUnitOfWorkFactory, new_case: Callable[..., Case]
) -> None:
    ids = ("before", "undone", "kept", "inner", "after-inner", "after-error")
    for factory in (uow_factory, InMemoryUnitOfWorkFactory()):
        with factory() as uow:
            case_id = uow.cases.add(new_case())
            uow.timers.arm(
                Timer(case_id, "merchant_review", "auto_approve", CaseState.SUBMITTED, 1, NOW, NOW)
            )
            uow.events.record("s", "before", None, NOW)
            with pytest.raises(RuntimeError), uow.savepoint():
                uow.events.record("s", "undone", None, NOW)
                raise RuntimeError("refused")
            with uow.savepoint():
                uow.events.record("s", "kept", None, NOW)
                with pytest.raises(RuntimeError), uow.savepoint():
                    uow.events.record("s", "inner", None, NOW)
                    raise RuntimeError("refused")
                uow.events.record("s", "after-inner", None, NOW)
            # A failed statement (a second live timer for the case): PostgreSQL aborts the
            # transaction, the savepoint brings it back.
            with pytest.raises(Conflict), uow.savepoint():
                uow.timers.arm(
                    Timer(
                        case_id, "merchant_review", "auto_approve", CaseState.SUBMITTED, 1, NOW, NOW
                    )
                )
            uow.events.record("s", "after-error", None, NOW)
            uow.commit()
        with factory() as uow:
            seen = {event_id: not uow.events.record("s", event_id, None, NOW) for event_id in ids}
        assert seen == {
            "before": True,
            "undone": False,
            "kept": True,
            "inner": False,
            "after-inner": True,
            "after-error": True,
        }


# -- events ----------------------------------------------------------------------------------------


def test_a_batch_gives_each_event_its_outcome_in_one_transaction(
    events: EventService, service: CaseService, engine: Engine, kicks: list[int]
) -> None:
    # given two submitted cases and a batch with, in order: an approval, the same approval
    # again, a pickup of the approved case, an event for an unknown case, garbage, an illegal
    # event (a delivery before any pickup, on the second case), and the second case's approval
    first, second = submitted(service, 2)
    kicks.clear()
    batch = [
        approve("a-1", first),
        approve("a-1", first),
        envelope("p-1", "parcel.picked_up", first, tracking_no="SF1"),
        approve("a-9", 999_999),
        "not json",
        envelope("i-1", "merchant.inspected", second, data={"merchant_id": "m1"}),
        approve("a-2", second),
    ]

    # when it is ingested as one batch
    results = events.ingest_many(batch)

    # then each event has its own outcome, the refused ones did not undo the others
    assert [result.status for result in results] == [
        IngestStatus.APPLIED,
        IngestStatus.DUPLICATE,
        IngestStatus.APPLIED,
        IngestStatus.DEAD_LETTERED,
        IngestStatus.DEAD_LETTERED,
        IngestStatus.DEAD_LETTERED,
        IngestStatus.APPLIED,
    ]
    assert [results[3].code, results[5].code] == ["not_found", "not_allowed"]
    # the two events of the first case applied in order
    assert triggers(service, first) == ["submit", "approve", "record_pickup"]
    assert service.get(first).case.state is CaseState.SHIPPED_BACK
    assert triggers(service, second) == ["submit", "approve"]
    # refused events leave no dedupe record (a later redelivery is tried again)
    assert recorded(engine) == [
        ("merchant-portal", "a-1", first),
        ("merchant-portal", "a-2", second),
        ("sf-express", "p-1", first),
    ]
    assert len(events.dead_letters()) == 3
    # one commit for the whole batch, one kick of the relay after it
    assert kicks == [1]
    # each applied event's timers and outbox rows: return_shipment armed for the second case,
    # a pickup requested for each approval (not for the duplicate)
    deadline = service.get(second).deadline
    assert deadline is not None and deadline.kind == "return_shipment"
    assert count(engine, "SELECT count(*) FROM outbox WHERE topic = 'pickup.requested'") == 2


def test_a_batch_larger_than_max_batch_commits_in_chunks_in_order(
    service: CaseService, uow_factory: SqlUnitOfWorkFactory, kicks: list[int]
) -> None:
    events = EventService(service, uow_factory, service.clock, max_batch=2)
    [case_id] = submitted(service, 1)
    kicks.clear()
    results = events.ingest_many(
        [
            approve("a-1", case_id),
            envelope("p-1", "parcel.picked_up", case_id, tracking_no="SF1"),
            envelope("d-1", "parcel.delivered", case_id, tracking_no="SF1"),
        ]
    )
    assert [r.status for r in results] == [IngestStatus.APPLIED] * 3
    assert triggers(service, case_id)[1:] == ["approve", "record_pickup", "record_return_delivery"]
    # a chunk of two, then a chunk of one
    assert kicks == [1, 1]


def test_an_event_that_loses_a_race_in_a_batch_is_planned_again_and_the_rest_go_on(
    backend: str,
    events: EventService,
    service: CaseService,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # given three cases, and a concurrent writer that approves the second one just as the
    # batch is about to write its approval event
    first, second, third = submitted(service, 3)
    real_transition = service.transition
    raced: list[int] = []

    def racing(uow: Any, case: Any, *args: Any, **kwargs: Any) -> Any:
        if case.id == second and not raced:
            raced.append(case.id)
            if backend == "sqlite":
                # One writer at a time: the concurrent writer cannot run inside this
                # transaction, so its effect (the compare-and-set failing) is simulated.
                raise Conflict("a concurrent writer won")
            # Another connection, committed now: the batch read the case before.
            service.fire(second, "approve", MERCHANT)
        return real_transition(uow, case, *args, **kwargs)

    monkeypatch.setattr(service, "transition", racing)

    # when the batch runs
    results = events.ingest_many(
        [approve("a-1", first), approve("a-2", second), approve("a-3", third)]
    )

    # then the first committed, the second was planned again on the case's new state (on
    # PostgreSQL the concurrent approval: already approved), and the third still applied
    assert raced == [second]
    expected_second = IngestStatus.IGNORED if backend == "postgres" else IngestStatus.APPLIED
    assert [r.status for r in results] == [
        IngestStatus.APPLIED,
        expected_second,
        IngestStatus.APPLIED,
    ]
    for case_id in (first, second, third):
        assert triggers(service, case_id) == ["submit", "approve"]


class _FailingCommit:
    """A unit of work whose first commit fails as a lost connection does (after committing,
    when ``committed``: the client cannot tell the two apart)."""

    def __init__(self, factory: SqlUnitOfWorkFactory, committed: bool) -> None:
        self._factory, self._committed, self.failed = factory, committed, 0

    def __call__(self) -> SqlUnitOfWork:
        uow = self._factory()
        real_commit = uow.commit

        def commit() -> None:
            if self.failed:
                real_commit()
                return
            self.failed += 1
            if self._committed:
                real_commit()
            else:
                uow.rollback()
            raise sa.exc.OperationalError("COMMIT", {}, ConnectionResetError("connection lost"))

        uow.commit = commit  # type: ignore[method-assign]
        return uow


@pytest.mark.parametrize("committed", [False, True], ids=["lost", "committed-but-unacknowledged"])
def test_a_batch_whose_transaction_fails_is_applied_one_by_one_once(
    committed: bool, service: CaseService, uow_factory: SqlUnitOfWorkFactory, engine: Engine
) -> None:
    # given cases, and a batch whose commit fails as if the connection dropped
    cases = submitted(service, 3)
    failing = _FailingCommit(uow_factory, committed)
    events = EventService(service, failing, service.clock)
    batch = [approve(f"a-{n}", case_id) for n, case_id in enumerate(cases)]
    batch.append(approve("a-0", cases[0]))  # a redelivery inside the batch

    # when it is ingested
    results = events.ingest_many(batch)

    # then the fallback applied every event once: what the lost batch did not commit applies
    # now, what it did commit is a duplicate
    assert failing.failed == 1
    again = IngestStatus.DUPLICATE if committed else IngestStatus.APPLIED
    assert [r.status for r in results] == [again] * 3 + [IngestStatus.DUPLICATE]
    for case_id in cases:
        assert triggers(service, case_id) == ["submit", "approve"]
    assert count(engine, "SELECT count(*) FROM inbound_events") == 3


@pytest.mark.postgres
def test_a_batch_whose_connection_is_killed_midway_falls_back(
    backend: str,
    service: CaseService,
    uow_factory: SqlUnitOfWorkFactory,
    engine: Engine,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    if backend != "postgres":
        pytest.skip("terminates a PostgreSQL backend (of this test's own database)")
    cases = submitted(service, 3)
    events = EventService(service, uow_factory, service.clock)
    real_transition = service.transition
    killed: list[int] = []

    def kill_own_connection(uow: Any, case: Any, *args: Any, **kwargs: Any) -> Any:
        if case.id == cases[1] and not killed:
            pid = uow.connection.exec_driver_sql("SELECT pg_backend_pid()").scalar_one()
            with engine.connect() as other:
                other.exec_driver_sql(f"SELECT pg_terminate_backend({int(pid)})")
            killed.append(pid)
        return real_transition(uow, case, *args, **kwargs)

    monkeypatch.setattr(service, "transition", kill_own_connection)
    results = events.ingest_many([approve(f"a-{n}", c) for n, c in enumerate(cases)])
    assert killed
    assert [r.status for r in results] == [IngestStatus.APPLIED] * 3
    for case_id in cases:
        assert triggers(service, case_id) == ["submit", "approve"]


# -- timers ----------------------------------------------------------------------------------------


def test_batched_timers_fire_skip_the_moved_and_leave_the_rescheduled_alone(
    service: CaseService, uow_factory: SqlUnitOfWorkFactory, kicks: list[int]
) -> None:
    # given four cases whose merchant_review timers are due and claimed by a sweeper
    cases = due_for_review(service, 4)
    with uow_factory() as uow:
        claimed = uow.timers.claim_due(REVIEW_DUE, 10, "sweeper", REVIEW_DUE)
        uow.commit()
    assert sorted(t.case_id for t in claimed) == cases
    # and, before they fire, the merchant approves the second case (its timer is cancelled)
    # and an admin extends the third one's deadline (the timer is rescheduled)
    service.fire(cases[1], "approve", MERCHANT)
    service.extend_deadline(cases[2], ADMIN, "holiday", hours=24)
    kicks.clear()

    # when the claimed batch fires in one transaction
    runs = service.fire_timers(claimed)

    # then the untouched cases were approved by their timer, the others were left alone
    by_case = {run.timer.case_id: run for run in runs}
    assert [by_case[c].fired for c in cases] == [True, False, False, True]
    assert by_case[cases[1]].outcome == by_case[cases[2]].outcome
    assert "already finished or rescheduled" in by_case[cases[1]].outcome
    for case_id in (cases[0], cases[3]):
        assert triggers(service, case_id) == ["submit", "auto_approve"]
    assert triggers(service, cases[1]) == ["submit", "approve"]
    # the rescheduled deadline is still live, at its new time
    view = service.get(cases[2])
    assert view.case.state is CaseState.SUBMITTED
    assert view.deadline is not None and view.deadline.due_at == REVIEW_DUE - timedelta(
        minutes=1
    ) + timedelta(hours=24)
    assert kicks == [1]


def test_a_batched_stale_timer_is_cancelled(
    service: CaseService, uow_factory: SqlUnitOfWorkFactory, engine: Engine
) -> None:
    # given two due timers, one of which no longer matches its case's version (a write that
    # bypassed the service moved the case without disarming it)
    cases = due_for_review(service, 2)
    with engine.begin() as connection:
        connection.execute(
            sa.text("UPDATE cases SET version = version + 1 WHERE id = :id"), {"id": cases[0]}
        )
    due = service.due_timers()

    runs = service.fire_timers(due)

    assert [(run.timer.case_id, run.fired, run.outcome) for run in runs] == [
        (cases[0], False, "stale: the case moved on"),
        (cases[1], True, "auto_approve: approved"),
    ]
    with uow_factory() as uow:
        stale = uow.timers.get(due[0].id or 0)
    assert stale is not None and stale.status is TimerStatus.CANCELLED


def test_batched_timers_fall_back_one_by_one_when_the_transaction_fails(
    service: CaseService, uow_factory: SqlUnitOfWorkFactory
) -> None:
    cases = due_for_review(service, 3)
    failing = _FailingCommit(uow_factory, committed=False)
    batched = CaseService(failing, service.clock, service.policy)
    runs = batched.fire_timers(service.due_timers())
    assert failing.failed == 1
    assert [run.fired for run in runs] == [True] * 3
    for case_id in cases:
        assert triggers(service, case_id) == ["submit", "auto_approve"]


def test_two_sweepers_at_once_fire_each_timer_once(
    service: CaseService, uow_factory: SqlUnitOfWorkFactory, engine: Engine
) -> None:
    # given 40 due timers and two sweepers claiming 7 at a time, firing 3 per transaction
    cases = due_for_review(service, 40)
    sweepers = [
        CaseService(uow_factory, service.clock, service.policy, timer_batch=3) for _ in range(2)
    ]
    barrier = threading.Barrier(2)
    fired: list[list[TimerRun]] = [[], []]
    failures: list[BaseException] = []

    def sweep(index: int) -> None:
        try:
            barrier.wait()
            while runs := sweepers[index].sweep_timers(f"sweeper-{index}", batch=7):
                fired[index].extend(run for run in runs if run.fired)
        except BaseException as exc:  # surfaced below
            failures.append(exc)

    threads = [threading.Thread(target=sweep, args=(i,)) for i in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)

    # then every timer fired exactly once, by one sweeper or the other
    assert failures == []
    timer_ids = [run.timer.id for runs in fired for run in runs]
    assert sorted(run.timer.case_id for runs in fired for run in runs) == cases
    assert len(set(timer_ids)) == len(timer_ids) == 40
    assert (
        count(engine, "SELECT count(*) FROM transitions WHERE \"trigger\" = 'auto_approve'") == 40
    )
    assert count(engine, "SELECT count(*) FROM timers WHERE status = 'fired'") == 40


# -- what events and timers write ----------------------------------------------------------------


def test_events_and_timers_label_their_log_rows_with_a_key_they_do_not_register(
    events: EventService, service: CaseService, uow_factory: SqlUnitOfWorkFactory, engine: Engine
) -> None:
    # given three cases due for review: one approved by an event, one by the merchant through
    # the API with an idempotency key, the third left to its timer
    by_event, by_api, by_timer = due_for_review(service, 3)
    assert events.ingest(approve("a-1", by_event)).status is IngestStatus.APPLIED
    service.fire(by_api, "approve", MERCHANT, idempotency_key="req-7")
    runs = service.sweep_timers("sweeper")
    assert [run.timer.case_id for run in runs if run.fired] == [by_timer]
    timer_id = runs[0].timer.id

    # then each log row names what caused it
    def keys(case_id: int) -> list[str | None]:
        return [record.idempotency_key for record in service.history(case_id)][1:]

    assert keys(by_event) == ["event:merchant-portal:a-1"]
    assert keys(by_api) == ["req-7"]
    assert keys(by_timer) == [f"timer-{timer_id}"]
    # but only the API's key is registered: the event's dedupe record and the timer's finish
    # already make those calls once
    registered = "SELECT case_id, key FROM idempotency_keys ORDER BY case_id"
    with engine.connect() as connection:
        assert [tuple(row) for row in connection.execute(sa.text(registered))] == [
            (by_api, "req-7")
        ]
    # and the deadlines the event and the timer armed (sent without asking for their ids) are
    # live, with ids, like the API's
    for case_id in (by_event, by_api, by_timer):
        deadline = service.get(case_id).deadline
        assert deadline is not None and deadline.id is not None
        assert deadline.kind == "return_shipment"
    # and the same timer fired again (a redelivered sweep) and the same event again do nothing
    assert not service.fire_timers([runs[0].timer])[0].fired
    assert events.ingest(approve("a-1", by_event)).status is IngestStatus.DUPLICATE
    assert triggers(service, by_timer) == ["submit", "auto_approve"]
    assert triggers(service, by_event) == ["submit", "approve"]


def test_a_deadline_armed_without_its_id_still_loses_a_race_as_a_conflict(
    uow_factory: SqlUnitOfWorkFactory, new_case: Callable[..., Case], engine: Engine
) -> None:
    # given a case with a live timer
    def review(case_id: int) -> Timer:
        return Timer(case_id, "merchant_review", "auto_approve", CaseState.SUBMITTED, 1, NOW, NOW)

    with uow_factory() as uow:
        case_id = uow.cases.add(new_case())
        uow.timers.arm(review(case_id))
        uow.commit()
    # when a second one is armed without asking for its id (PostgreSQL sends it later)
    # (after a read: a unit of work's first statement always runs at once)
    with pytest.raises(Conflict), uow_factory() as uow:
        assert uow.cases.get(case_id) is not None
        # (a unit of work made once by an event's record reads no new timer's id)
        assert uow.events.record("sf", f"arm-{case_id}", case_id, NOW)
        uow.timers.arm(review(case_id))
        uow.commit()
    # then the race is a Conflict, at the arm or at the commit, and nothing was written
    assert count(engine, f"SELECT count(*) FROM timers WHERE case_id = {case_id}") == 1


def test_a_timer_whose_case_moves_before_its_write_sends_the_batch_one_by_one(
    backend: str, service: CaseService, monkeypatch: pytest.MonkeyPatch
) -> None:
    if backend == "sqlite":
        pytest.skip("one writer at a time: no transition can commit inside the batch's")
    # given three due timers, and a merchant approving the second case (another connection,
    # committed) after the batch read the cases, just before it writes the second firing
    cases = due_for_review(service, 3)
    real_write = service._write_transition
    raced: list[int] = []

    def racing(uow: Any, case: Case, *args: Any, **kwargs: Any) -> Any:
        if case.id == cases[1] and not raced:
            raced.append(case.id)
            service.fire(cases[1], "approve", MERCHANT)
        return real_write(uow, case, *args, **kwargs)

    monkeypatch.setattr(service, "_write_transition", racing)

    # when the batch fires (its compare-and-sets go out deferred: the miss is found later)
    runs = service.sweep_timers("sweeper")

    # then the batch was not committed with the miss: one by one, the first and third timers
    # fired, the second found its case moved on, and no case moved twice
    assert raced == [cases[1]]
    by_case = {run.timer.case_id: run for run in runs}
    assert [by_case[c].fired for c in cases] == [True, False, True]
    assert triggers(service, cases[0]) == triggers(service, cases[2]) == ["submit", "auto_approve"]
    assert triggers(service, cases[1]) == ["submit", "approve"]


def test_a_batch_reads_the_cases_its_events_name_in_one_statement(
    events: EventService, service: CaseService, statements: list[str]
) -> None:
    # given five submitted cases and a batch approving each, then picking up the first
    cases = submitted(service, 5)
    statements.clear()
    batch = [approve(f"a-{n}", case_id) for n, case_id in enumerate(cases)]
    batch.append(envelope("p-0", "parcel.picked_up", cases[0], tracking_no="SF0"))
    results = events.ingest_many(batch)
    # (a case read alone, or with the event's dedupe record: ``EventStore.record``)
    batch_reads = len([sql for sql in statements if sql.startswith(("SELECT cases.", "WITH "))])

    # then every event applied, in order (the pickup saw the approval before it)
    assert [r.status for r in results] == [IngestStatus.APPLIED] * 6
    assert triggers(service, cases[0]) == ["submit", "approve", "record_pickup"]
    # with one read for the batch, and one more for the case met a second time
    assert batch_reads == 2


def picked_up_by_order(event_id: str, order_id: str, tracking_no: str) -> dict[str, Any]:
    """A carrier's first scan of a parcel the platform booked: the order and the parcel, no
    case id."""
    document = envelope(event_id, "parcel.picked_up", 0, order_id=order_id, tracking_no=tracking_no)
    del document["case_id"]
    return document


def test_a_batch_finds_the_cases_its_events_name_by_order_in_one_read(
    events: EventService, service: CaseService, statements: list[str]
) -> None:
    # given five approved cases, one per order
    cases = submitted(service, 5)
    events.ingest_many([approve(f"a-{n}", case_id) for n, case_id in enumerate(cases)])
    statements.clear()

    # when a batch of the carrier's first scans names each by its order and a new parcel
    results = events.ingest_many(
        [picked_up_by_order(f"p-{n}", f"o-{n}", f"SF{n}") for n in range(5)]
    )
    case_reads = [sql for sql in statements if sql.startswith("SELECT cases.")]
    timer_reads = [sql for sql in statements if sql.startswith("SELECT timers.")]

    # then each found its case and applied
    assert [r.status for r in results] == [IngestStatus.APPLIED] * 5
    assert [r.case_id for r in results] == cases
    for case_id in cases:
        assert triggers(service, case_id) == ["submit", "approve", "record_pickup"]
    # with one read of the orders' cases and their timers for the batch, none per event
    assert len(case_reads) == 1
    assert timer_reads == []


def test_an_event_named_by_order_sees_what_the_batch_did_to_that_order_before_it(
    events: EventService, service: CaseService
) -> None:
    # given a submitted case
    (case_id,) = submitted(service, 1)

    # when one batch approves it (by its id) and then carries the carrier's first scan of
    # its parcel (by its order): the batch's copy of the order's cases predates the approval
    results = events.ingest_many([approve("a-0", case_id), picked_up_by_order("p-0", "o-0", "SF0")])

    # then the scan was planned on the approved case, not on the copy, and applied
    assert [r.status for r in results] == [IngestStatus.APPLIED] * 2
    assert triggers(service, case_id) == ["submit", "approve", "record_pickup"]


def test_a_batch_records_its_events_without_a_round_trip_each(
    backend: str, events: EventService, service: CaseService, statements: list[str]
) -> None:
    if backend == "sqlite":
        pytest.skip("SQLite runs every write at once (no round trips to save)")
    # given nine submitted cases
    cases = submitted(service, 9)

    # when a batch of three approvals and then one of six are ingested
    statements.clear()
    small = events.ingest_many([approve(f"a-{n}", c) for n, c in enumerate(cases[:3])])
    waited_small = len(statements)
    statements.clear()
    large = events.ingest_many([approve(f"a-{n}", c) for n, c in enumerate(cases[3:], 3)])
    waited_large = len(statements)

    # then every event applied, and the statements that wait for an answer (the batch's
    # reads) do not grow with the batch: each event's record rides with the next statement
    assert [r.status for r in small + large] == [IngestStatus.APPLIED] * 9
    assert waited_small == waited_large


def test_an_event_recorded_by_a_concurrent_delivery_after_the_batch_read_is_a_duplicate(
    events: EventService, service: CaseService, engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    # given an approval another delivery applied (committed) just after the batch's read of
    # recorded events (the read is made to miss it: the window between the two)
    first, second = submitted(service, 2)
    assert events.ingest(approve("a-0", first)).status is IngestStatus.APPLIED
    monkeypatch.setattr(SqlEventStore, "_read_recorded", lambda self, ids: set())

    # when a batch carries it again, with a new approval of the second case
    results = events.ingest_many([approve("a-0", first), approve("a-1", second)])

    # then its checked record missed, the batch went one event per transaction, and the copy
    # is a duplicate (not planned again on the approved case), the other applied once
    assert [r.status for r in results] == [IngestStatus.DUPLICATE, IngestStatus.APPLIED]
    assert triggers(service, first) == triggers(service, second) == ["submit", "approve"]
    assert recorded(engine) == [
        ("merchant-portal", "a-0", first),
        ("merchant-portal", "a-1", second),
    ]
