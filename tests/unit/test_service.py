"""The service layer's contract: idempotency, optimistic concurrency, typed errors, timers."""

from __future__ import annotations

import copy
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import pytest

from workflow.clock import FakeClock
from workflow.errors import (
    Conflict,
    Forbidden,
    IdempotencyKeyReused,
    InvalidInput,
    NotAllowed,
    NotFound,
    case_moved,
)
from workflow.memory import InMemoryCaseRepository, InMemoryDatabase, InMemoryUnitOfWorkFactory
from workflow.model import Actor, Timer, TimerStatus
from workflow.ports import CaseQuery
from workflow.service import CaseService
from workflow.states import CaseState, Role

from .builders import (
    ADMIN,
    BUYER,
    CARRIER,
    MERCHANT,
    PAYMENT,
    SYSTEM,
    data_for,
    item,
    submit_with_order,
)

NewCase = Callable[..., int]
MakeApp = Callable[..., dict[str, Any]]


def _written(db: InMemoryDatabase) -> tuple[Any, ...]:
    """Everything a call could write, to compare before and after."""
    return copy.deepcopy((db.cases, db.log, db.timers, db.outbox, db.orders))


# == idempotency keys =============================================================================


def test_a_repeated_trigger_with_the_same_key_returns_the_first_result_and_writes_nothing(
    service: CaseService, new_case: NewCase, db: InMemoryDatabase
):
    # given: the buyer shipped the return with key k1
    case_id = new_case("return_refund", "approved")
    first = service.fire(
        case_id, "ship_back", BUYER, data={"tracking_no": "T1"}, idempotency_key="k1"
    )
    before = _written(db)
    # when: the same call arrives again
    again = service.fire(
        case_id, "ship_back", BUYER, data={"tracking_no": "T1"}, idempotency_key="k1"
    )
    # then: the first result, marked as a replay; nothing new stored
    assert again.replayed and not first.replayed
    assert again.records == first.records
    assert again.case.version == first.case.version
    assert _written(db) == before


def test_a_replay_returns_the_first_result_even_after_the_case_moved_on(
    service: CaseService, new_case: NewCase, db: InMemoryDatabase
):
    # given: approve with key k-approve, then the case moved on
    case_id = new_case("return_refund")
    first = service.fire(case_id, "approve", MERCHANT, idempotency_key="k-approve")
    service.fire(case_id, "ship_back", BUYER, data={"tracking_no": "T1"})
    before = _written(db)
    # when: the approval is retried (approve would not be allowed any more)
    again = service.fire(case_id, "approve", MERCHANT, idempotency_key="k-approve")
    # then: the earlier result, not a NotAllowed; nothing written
    assert again.replayed and again.records == first.records
    assert again.case.state is CaseState.SHIPPED_BACK
    assert _written(db) == before


def test_a_replay_returns_every_record_of_the_first_call_including_follow_ups(
    service: CaseService, new_case: NewCase
):
    # given: an inspection whose follow-up started the refund
    case_id = new_case("return_refund", "received")
    first = service.fire(case_id, "inspect", MERCHANT, data={}, idempotency_key="k-inspect")
    # when: the inspection is retried with its key
    again = service.fire(case_id, "inspect", MERCHANT, data={}, idempotency_key="k-inspect")
    # then: both records come back, as the first time
    assert [r.trigger for r in again.records] == ["inspect", "start_refund"]
    assert again.records == first.records


def test_a_replay_by_another_owner_is_still_forbidden(service: CaseService, new_case: NewCase):
    # given: m1 approved with key k1
    case_id = new_case("return_refund")
    service.fire(case_id, "approve", MERCHANT, idempotency_key="k1")
    # when/then: m2 replaying k1 learns nothing about m1's case
    with pytest.raises(Forbidden):
        service.fire(case_id, "approve", Actor(Role.MERCHANT, "m2"), idempotency_key="k1")


def test_different_keys_are_different_calls(service: CaseService, new_case: NewCase):
    # given: approved with key k1
    case_id = new_case("return_refund")
    service.fire(case_id, "approve", MERCHANT, idempotency_key="k1")
    # when/then: a new key is a new request, judged on the current state
    with pytest.raises(NotAllowed):
        service.fire(case_id, "approve", MERCHANT, idempotency_key="k2")


def test_a_repeated_submission_with_the_same_key_returns_the_first_case(
    service: CaseService, make_app: MakeApp, db: InMemoryDatabase
):
    # given: an application submitted with key sub-1
    first = submit_with_order(service, make_app(), idempotency_key="sub-1")
    before = _written(db)
    # when: submitted again with the same key (a retried request)
    again = submit_with_order(service, make_app(), idempotency_key="sub-1")
    # then: the same case, not a one-open-case refusal, and nothing new
    assert again.case.id == first.case.id
    assert again.deadline == first.deadline
    assert _written(db) == before


def test_a_repeated_submission_is_replayed_even_after_the_window_closed(
    service: CaseService, clock: FakeClock, make_app: MakeApp
):
    # given: submitted on the last day of the no-reason window
    app = make_app(delivered_at=clock.now() - timedelta(days=6, hours=12))
    first = submit_with_order(service, app, idempotency_key="sub-1")
    # when: the client retries the same request after midnight
    clock.advance(timedelta(days=2))
    again = submit_with_order(service, app, idempotency_key="sub-1")
    # then: the first result
    assert again.case.id == first.case.id


def test_a_timer_fired_twice_moves_the_case_once(
    service: CaseService, clock: FakeClock, new_case: NewCase
):
    # given: the review deadline is due
    case_id = new_case("return_refund")
    timer = service.get(case_id).deadline
    assert timer is not None and timer.id is not None
    clock.advance(timedelta(hours=48))
    # when: two sweepers fire it
    assert service.fire_timer(timer.id).fired
    second = service.fire_timer(timer.id)
    # then: the second does nothing; the case moved once
    assert not second.fired and "fired" in second.outcome
    assert [r.trigger for r in service.history(case_id)] == ["submit", "auto_approve"]


# == optimistic concurrency =======================================================================


def test_a_stale_expected_version_is_a_conflict_and_writes_nothing(
    service: CaseService, new_case: NewCase, db: InMemoryDatabase
):
    # given: a case at version 2 (submitted, approved)
    case_id = new_case("return_refund", "approved")
    version = service.get(case_id).case.version
    before = _written(db)
    # when: a caller that last saw version 1 fires
    with pytest.raises(Conflict) as conflict:
        service.fire(case_id, "cancel", BUYER, expected_version=version - 1)
    # then: a conflict telling the current version; nothing written
    assert conflict.value.current_version == version
    assert _written(db) == before
    # and with the right version it goes through
    assert service.fire(case_id, "cancel", BUYER, expected_version=version).case.version == (
        version + 1
    )


def test_a_stale_version_with_an_unused_key_is_still_a_conflict(
    service: CaseService, new_case: NewCase
):
    # given: a case at version 2
    case_id = new_case("return_refund", "approved")
    # when/then: a key never used does not excuse a stale version
    with pytest.raises(Conflict):
        service.fire(case_id, "cancel", BUYER, idempotency_key="fresh", expected_version=1)


# == typed errors ===============================================================================


def test_an_unknown_case_is_not_found(service: CaseService):
    # given: an empty storage; when: any call names case 999 (or timer 999); then: NotFound
    for call in (
        lambda: service.get(999),
        lambda: service.history(999),
        lambda: service.allowed_triggers(999, BUYER),
        lambda: service.fire(999, "approve", MERCHANT),
        lambda: service.extend_deadline(999, ADMIN, "holiday", hours=1),
        lambda: service.fire_timer(999),
    ):
        with pytest.raises(NotFound):
            call()


@pytest.mark.parametrize("trigger", ["approved", "to_closed", "", "APPROVE"])
def test_an_unknown_trigger_is_invalid_input(service: CaseService, new_case: NewCase, trigger: str):
    # given: a submitted case
    case_id = new_case("return_refund")
    # when: a name that is no trigger (nor a transitions auto-transition) is fired
    with pytest.raises(InvalidInput) as invalid:
        service.fire(case_id, trigger, MERCHANT)
    # then: invalid input about the trigger
    assert invalid.value.field == "trigger"


@pytest.mark.parametrize(
    ("label", "trigger", "actor", "data", "field"),
    [
        ("approved", "ship_back", BUYER, {}, "data.tracking_no"),
        ("approved", "ship_back", BUYER, {"tracking_no": "has spaces"}, "data.tracking_no"),
        ("approved", "ship_back", BUYER, {"tracking_no": "T1", "x": 1}, "data.x"),
        ("approved", "book_pickup", SYSTEM, {"carrier": "SF"}, "data.pickup_code"),
        ("received", "inspect", MERCHANT, {"gifts_missing": "G"}, "data.gifts_missing"),
        ("approved", "cancel", BUYER, {"why": "changed mind"}, "data.why"),
        (
            "awaiting_bank_account",
            "provide_bank_account",
            BUYER,
            {"holder": "Li", "bank": "ICBC", "account_no": "12ab"},
            "data.account_no",
        ),
        ("refunding", "confirm_refund", PAYMENT, {"reference": 42}, "data.reference"),
        ("shipped_back", "record_return_delivery", CARRIER, {"note": "x" * 2001}, "data.note"),
    ],
)
def test_malformed_trigger_data_is_invalid_input_naming_the_field(
    service: CaseService,
    new_case: NewCase,
    db: InMemoryDatabase,
    label: str,
    trigger: str,
    actor: Actor,
    data: dict[str, Any],
    field: str,
):
    # given: a case where the trigger is allowed
    case_id = new_case("return_refund", label)
    before = _written(db)
    # when: its data is malformed
    with pytest.raises(InvalidInput) as invalid:
        service.fire(case_id, trigger, actor, data=data)
    # then: the field is named and nothing changed
    assert invalid.value.field == field
    assert field in str(invalid.value)
    assert _written(db) == before


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"items": []}, "items"),
        (
            {
                "payment": {
                    "channel": "wechat_pay",
                    "amount": 0,
                    "paid_at": "2026-11-15T10:00:00+08:00",
                }
            },
            "payment.amount",
        ),
        ({"delivered_at": "2026-11-18T10:00:00"}, "delivered_at"),
        ({"reason": "whim"}, "reason"),
        ({"type": "swap"}, "type"),
        ({"requested_amount": -1}, "requested_amount"),
        ({"items": [item("A", 100), item("A", 200)]}, "items"),
        ({"items": [{"sku": "A", "quantity": "1", "unit_price": 100}]}, "items.0.quantity"),
        ({"colour": "red"}, "colour"),
    ],
)
def test_a_malformed_application_is_invalid_input_naming_the_field(
    service: CaseService,
    make_app: MakeApp,
    db: InMemoryDatabase,
    overrides: dict[str, Any],
    field: str,
):
    # when: an application with one malformed field
    with pytest.raises(InvalidInput) as invalid:
        submit_with_order(service, make_app(**overrides))
    # then: refused naming that field; nothing stored
    assert invalid.value.field == field
    assert db.cases == {} and db.log == {}


def test_too_many_lines_on_an_application_is_invalid_input(service: CaseService, make_app: MakeApp):
    # given: 101 lines (the policy allows 100); when/then: invalid input
    items = [item(f"S{n}", 1) for n in range(101)]
    with pytest.raises(InvalidInput) as invalid:
        submit_with_order(service, make_app(items=items, gifts=[]))
    assert invalid.value.field == "items"


@pytest.mark.parametrize("reason", [None, "", "  \t"])
@pytest.mark.parametrize("trigger", ["force_close", "escalate", "force_refund"])
def test_an_admin_without_a_reason_is_invalid_input(
    service: CaseService, new_case: NewCase, db: InMemoryDatabase, trigger: str, reason: str | None
):
    # given: a submitted case
    case_id = new_case("return_refund")
    before = _written(db)
    # when: an admin forces a transition without a reason
    with pytest.raises(InvalidInput) as invalid:
        service.fire(case_id, trigger, ADMIN, reason=reason)
    # then: refused naming the reason; nothing written
    assert invalid.value.field == "reason"
    assert _written(db) == before


def test_a_merchant_rejection_without_a_reason_is_invalid_input(
    service: CaseService, new_case: NewCase
):
    # given: a submitted case; when: the merchant rejects without saying why
    case_id = new_case("return_refund")
    with pytest.raises(InvalidInput) as invalid:
        service.fire(case_id, "reject", MERCHANT, reason=" ")
    # then: invalid; with a reason the rejection goes through
    assert invalid.value.field == "reason"
    assert service.fire(case_id, "reject", MERCHANT, reason="blurry photos").case.state is (
        CaseState.REJECTED
    )


def test_not_allowed_is_checked_before_the_data(service: CaseService, new_case: NewCase):
    # given: a submitted case; when: the buyer ships with junk data
    case_id = new_case("return_refund")
    with pytest.raises(NotAllowed) as refused:
        service.fire(case_id, "ship_back", BUYER, data={"junk": True})
    # then: the state is the problem, and the buyer learns what it may do
    assert refused.value.allowed == ["cancel"]


@pytest.mark.parametrize(
    "actor", [MERCHANT, SYSTEM, Actor(Role.CARRIER), Actor(Role.BUYER, "b2")], ids=str
)
def test_only_the_buyer_or_an_admin_submits(service: CaseService, make_app: MakeApp, actor: Actor):
    # given: b1's application; when: someone else submits it; then: forbidden
    with pytest.raises(Forbidden):
        submit_with_order(service, make_app(), actor=actor)


def test_an_admin_submits_on_a_buyers_behalf(service: CaseService, make_app: MakeApp):
    # when: customer service submits for b1; then: the log says who did
    view = submit_with_order(service, make_app(), actor=ADMIN)
    assert service.history(view.case.id or 0)[0].actor == "admin:ops1"


def test_listing_shows_buyers_and_merchants_only_their_cases(
    service: CaseService, make_app: MakeApp
):
    # given: b1's case at m1 and b2's case at m2
    mine = submit_with_order(service, make_app()).case.id
    submit_with_order(service, make_app(order_id="o2", buyer_id="b2", merchant_id="m2"))
    # when/then: each party lists its own (a buyer cannot ask for another's); admins see all
    assert [v.case.id for v in service.list(CaseQuery(), BUYER)] == [mine]
    assert [v.case.id for v in service.list(CaseQuery(buyer_id="b2"), BUYER)] == [mine]
    assert [v.case.id for v in service.list(CaseQuery(), MERCHANT)] == [mine]
    assert len(service.list(CaseQuery(), ADMIN)) == 2


# == timers =======================================================================================


def _timers_of(db: InMemoryDatabase, case_id: int) -> list[Timer]:
    return sorted((t for t in db.timers.values() if t.case_id == case_id), key=lambda t: t.id or 0)


def test_entering_a_state_arms_its_timer_and_leaving_disarms_it(
    service: CaseService, clock: FakeClock, new_case: NewCase, db: InMemoryDatabase
):
    # given: a submitted case: the review deadline is armed at submission
    case_id = new_case("return_refund")
    (review,) = _timers_of(db, case_id)
    assert (review.kind, review.state, review.version) == (
        "merchant_review",
        CaseState.SUBMITTED,
        1,
    )
    assert review.due_at == clock.now() + timedelta(hours=48)
    # when: the merchant approves an hour later
    clock.advance(timedelta(hours=1))
    approved = service.fire(case_id, "approve", MERCHANT)
    # then: the review timer is disarmed and the return deadline armed for the new state
    review, shipment = _timers_of(db, case_id)
    assert review.status is TimerStatus.CANCELLED
    assert shipment.status is TimerStatus.PENDING
    assert (shipment.kind, shipment.state, shipment.version) == (
        "return_shipment",
        CaseState.APPROVED,
        approved.case.version,
    )
    assert shipment.due_at == clock.now() + timedelta(days=7)
    assert approved.deadline == shipment
    # when: the buyer cancels; then: no live timer remains
    service.fire(case_id, "cancel", BUYER)
    assert [t.status for t in _timers_of(db, case_id)] == [TimerStatus.CANCELLED] * 2
    assert service.get(case_id).deadline is None


def test_a_state_without_a_timer_arms_none(service: CaseService, new_case: NewCase):
    # given/when: a case entered refunding (waiting on the payment gateway); then: no deadline
    case_id = new_case("return_refund", "refunding")
    assert service.get(case_id).deadline is None


def test_the_pickup_state_keeps_the_approval_deadline(
    service: CaseService, clock: FakeClock, new_case: NewCase
):
    # given: approved at t0, the buyer has until t0 + 7 days
    case_id = new_case("return_refund", "approved")
    deadline = service.get(case_id).deadline
    assert deadline is not None
    due = deadline.due_at
    # when: the pickup is booked two days later
    clock.advance(timedelta(days=2))
    booked = service.fire(case_id, "book_pickup", SYSTEM, data=data_for("book_pickup"))
    # then: same kind, same due time, re-armed for the new state and version
    assert booked.deadline is not None
    assert booked.deadline.kind == "return_shipment" and booked.deadline.due_at == due
    assert (booked.deadline.state, booked.deadline.version) == (
        CaseState.PICKUP,
        booked.case.version,
    )
    # and it fires then: at due - 1 min nothing, at due the case closes
    clock.set(due - timedelta(minutes=1))
    assert service.run_due_timers() == []
    clock.set(due)
    service.run_due_timers()
    assert service.get(case_id).case.state is CaseState.CLOSED


def test_a_timer_swept_after_the_case_moved_on_does_nothing(
    service: CaseService, clock: FakeClock, new_case: NewCase
):
    # given: the sweeper listed the due review timer ...
    case_id = new_case("return_refund")
    clock.advance(timedelta(hours=48))
    (due,) = service.due_timers()
    assert due.id is not None
    # ... and the merchant approved before the sweeper got to it
    approved = service.fire(case_id, "approve", MERCHANT)
    # when: the sweeper fires it
    run = service.fire_timer(due.id)
    # then: nothing happens
    assert not run.fired
    assert service.get(case_id).case.version == approved.case.version
    assert [r.trigger for r in service.history(case_id)] == ["submit", "approve"]


def test_a_stale_pending_timer_is_cancelled_without_firing(
    service: CaseService,
    clock: FakeClock,
    new_case: NewCase,
    uow_factory: InMemoryUnitOfWorkFactory,
    db: InMemoryDatabase,
):
    # given: a timer left pending for a state the case has left (e.g. after a crash)
    case_id = new_case("return_refund", "refunding")
    with uow_factory() as uow:
        uow.timers.arm(
            Timer(
                case_id,
                "merchant_review",
                "auto_approve",
                CaseState.SUBMITTED,
                1,
                clock.now(),
                clock.now(),
            )
        )
        uow.commit()
    (stale,) = service.due_timers()
    version = service.get(case_id).case.version
    # when
    runs = service.run_due_timers()
    # then: not fired, marked done, the case untouched
    assert [(r.fired, r.outcome.startswith("stale")) for r in runs] == [(False, True)]
    assert db.timers[stale.id or 0].status is TimerStatus.CANCELLED
    assert service.get(case_id).case.version == version
    assert service.get(case_id).case.state is CaseState.REFUNDING


def test_a_timer_not_yet_due_does_not_fire(service: CaseService, new_case: NewCase):
    # given: a review deadline 48 h away
    case_id = new_case("return_refund")
    timer = service.get(case_id).deadline
    assert timer is not None and timer.id is not None
    # when: fired by id before its time
    run = service.fire_timer(timer.id)
    # then: nothing happens
    assert not run.fired and run.outcome == "not due yet"
    assert service.get(case_id).case.state is CaseState.SUBMITTED


def test_run_due_timers_fires_each_due_case_once_in_due_order(
    service: CaseService, clock: FakeClock, new_case: NewCase
):
    # given: two cases submitted an hour apart
    early = new_case("return_refund")
    clock.advance(timedelta(hours=1))
    late = new_case("exchange", order_id="o2")
    # when: long after both deadlines
    clock.advance(timedelta(days=3))
    runs = service.run_due_timers()
    # then: both fired once, oldest first; the next deadlines are counted from now
    assert [(r.timer.case_id, r.fired) for r in runs] == [(early, True), (late, True)]
    assert service.run_due_timers() == []
    next_deadline = service.get(early).deadline
    assert next_deadline is not None
    assert next_deadline.due_at == clock.now() + timedelta(days=7)


def test_a_timer_that_loses_its_race_in_a_batch_rolls_back_alone(
    monkeypatch: pytest.MonkeyPatch,
    uow_factory: InMemoryUnitOfWorkFactory,
    clock: FakeClock,
    service: CaseService,
    new_case: NewCase,
    db: InMemoryDatabase,
):
    # given: three due review deadlines, and a concurrent writer that wins the middle case's
    # compare-and-set
    cases = [new_case("return_refund", order_id=f"o{n}") for n in range(3)]
    clock.advance(timedelta(days=3))
    kicks: list[int] = []
    real_save = InMemoryCaseRepository.save

    def save(repository: InMemoryCaseRepository, case: Any, expected_version: int) -> None:
        if case.id == cases[1]:
            raise case_moved(case.id)
        real_save(repository, case, expected_version)

    monkeypatch.setattr(InMemoryCaseRepository, "save", save)
    batched = CaseService(uow_factory, clock, service.policy, lambda: kicks.append(1))
    # when: the batch fires in one transaction
    runs = batched.run_due_timers()
    # then: the others fired and committed together; the loser wrote nothing and stays live
    assert [(r.timer.case_id, r.fired) for r in runs] == [
        (cases[0], True),
        (cases[1], False),
        (cases[2], True),
    ]
    assert runs[1].outcome == "conflict: the case moved meanwhile"
    monkeypatch.undo()
    assert [service.get(c).case.state for c in cases] == [
        CaseState.APPROVED,
        CaseState.SUBMITTED,
        CaseState.APPROVED,
    ]
    assert [e.trigger for e in db.log[cases[1]]] == ["submit"]
    live = service.get(cases[1]).deadline
    assert live is not None and live.status is TimerStatus.PENDING
    assert kicks == [1]


def test_a_key_of_one_command_is_refused_for_another_on_the_same_case(
    service: CaseService, new_case: NewCase
) -> None:
    # given an approval made with a key
    case_id = new_case("return_refund")
    service.fire(case_id, "approve", MERCHANT, idempotency_key="k-1")

    # when the buyer's cancellation comes with the same key
    with pytest.raises(IdempotencyKeyReused) as refused:
        service.fire(case_id, "cancel", BUYER, idempotency_key="k-1")

    # then it is refused, naming the first command, and the case was not cancelled (before,
    # the cancel replayed the approval's answer and did nothing)
    assert "approve" in str(refused.value) and refused.value.field == "idempotency_key"
    assert service.get(case_id).case.state is CaseState.APPROVED


def test_a_submission_key_is_refused_for_a_trigger(service: CaseService, make_app: Any) -> None:
    case_id = submit_with_order(service, make_app("return_refund"), idempotency_key="k-sub").case.id
    assert case_id is not None
    with pytest.raises(IdempotencyKeyReused):
        service.fire(case_id, "cancel", BUYER, idempotency_key="k-sub")
    assert service.get(case_id).case.state is CaseState.SUBMITTED


def test_a_key_used_on_one_case_is_refused_on_another(
    service: CaseService, new_case: NewCase
) -> None:
    first = new_case("return_refund")
    second = new_case("return_refund", order_id="o-other")
    service.fire(first, "approve", MERCHANT, idempotency_key="k-1")
    with pytest.raises(Conflict, match="k-1 was already used"):
        service.fire(second, "approve", MERCHANT, idempotency_key="k-1")
    assert service.get(second).case.state is CaseState.SUBMITTED
