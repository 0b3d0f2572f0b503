"""The side effects of transitions (``workflow.effects``) under at-least-once delivery.

In-memory unit of work, the in-process fakes of ``adapters.fake_gateways`` with their ledgers in
a SQLite file of the test's own. Failures are scripted call by call (``fake.script(...)``), never
timed: nothing here sleeps.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from adapters.fake_gateways import (
    Behaviour,
    FakeCarrier,
    FakeNotifier,
    FakePaymentGateway,
    FakeShipper,
)
from config.policy import Policy
from persistence.db import dispose_engine
from tasks.publish import TASK_RETRY, effects_for_topic
from workflow.clock import FakeClock
from workflow.effects import (
    ADMINS,
    EffectService,
    EffectStatus,
    entry_from_message,
    entry_to_message,
)
from workflow.errors import Forbidden, InvalidInput
from workflow.gateways import GatewayUnavailable, RefundStatus
from workflow.memory import InMemoryDatabase
from workflow.model import OutboxEntry, RefundRoute, TimerStatus
from workflow.service import CaseService
from workflow.states import CaseState

from .builders import ADMIN, BUYER, ITEM_PRICE, MERCHANT, OTHER_MERCHANT, REASON

NewCase = Callable[..., int]


class Crash(BaseException):
    """The worker dies (not an ``Exception``: nothing on the way may catch it)."""


@pytest.fixture
def ledger_url(tmp_path: Path) -> Iterator[str]:
    url = f"sqlite:///{tmp_path / 'gateway.db'}"
    yield url
    dispose_engine(url)


@pytest.fixture
def carrier(clock: FakeClock) -> FakeCarrier:
    return FakeCarrier(clock=clock)


@pytest.fixture
def payments(ledger_url: str, clock: FakeClock) -> FakePaymentGateway:
    return FakePaymentGateway(ledger_url, clock=clock)


@pytest.fixture
def notifier(ledger_url: str, clock: FakeClock) -> FakeNotifier:
    return FakeNotifier(ledger_url, clock=clock)


@pytest.fixture
def shipper(clock: FakeClock) -> FakeShipper:
    return FakeShipper(clock=clock)


@pytest.fixture
def effects(
    service: CaseService,
    carrier: FakeCarrier,
    payments: FakePaymentGateway,
    notifier: FakeNotifier,
    shipper: FakeShipper,
) -> EffectService:
    return EffectService(service, carrier, payments, notifier, shipper)


def entries(db: InMemoryDatabase, topic: str, case_id: int) -> list[OutboxEntry]:
    return [e for e in db.outbox if e.topic == topic and e.case_id == case_id]


def last_entry(db: InMemoryDatabase, topic: str, case_id: int) -> OutboxEntry:
    found = entries(db, topic, case_id)
    assert found, f"no {topic} entry for case {case_id}"
    return found[-1]


def triggers(service: CaseService, case_id: int) -> list[str]:
    return [r.trigger for r in service.history(case_id)]


def run_retry_timer(service: CaseService, clock: FakeClock, policy: Policy, case_id: int) -> None:
    """Let the durable refund_retry timer fire (the clock moves to its due time)."""
    deadline = service.get(case_id).deadline
    assert deadline is not None and deadline.kind == "refund_retry"
    clock.set(deadline.due_at)
    runs = service.run_due_timers()
    assert [run.fired for run in runs] == [True]


# == pickup.requested ==============================================================================


def test_a_pickup_is_booked_once_when_the_same_entry_is_handled_three_times(
    effects: EffectService,
    service: CaseService,
    new_case: NewCase,
    db: InMemoryDatabase,
    carrier: FakeCarrier,
) -> None:
    # given: an approved return and its pickup request
    case_id = new_case("return_refund", "approved")
    entry = last_entry(db, "pickup.requested", case_id)
    # when: the relay delivers it three times
    results = [effects.handle(entry) for _ in range(3)]
    # then: one booking, one transition to pickup carrying the pickup information
    assert [r.status for r in results] == [EffectStatus.DONE] + [EffectStatus.SKIPPED] * 2
    assert len(carrier.bookings) == 1
    (booked,) = carrier.bookings.values()
    case = service.get(case_id).case
    assert case.state is CaseState.PICKUP
    assert case.details["pickup"] == booked.as_data()
    assert triggers(service, case_id).count("book_pickup") == 1


def test_a_second_delivery_racing_the_first_books_the_same_pickup_and_replays_the_transition(
    service: CaseService,
    new_case: NewCase,
    db: InMemoryDatabase,
    carrier: FakeCarrier,
    payments: FakePaymentGateway,
    notifier: FakeNotifier,
) -> None:
    # given: a carrier during whose booking a second worker handles the same entry
    case_id = new_case("return_refund", "approved")
    entry = last_entry(db, "pickup.requested", case_id)
    inner: list[Any] = []

    class RacingCarrier:
        def book(self, case_id: int, order_id: str, key: str) -> Any:
            if not inner:
                inner.append(EffectService(service, carrier, payments, notifier).handle(entry))
            return carrier.book(case_id, order_id, key)

    # when: the first worker finishes after the second
    outer = EffectService(service, RacingCarrier(), payments, notifier).handle(entry)
    # then: both saw the case approved, booked with one key, and the transition happened once
    assert inner[0].status is EffectStatus.DONE
    assert outer.status is EffectStatus.DONE and "replayed" in outer.detail
    assert len(carrier.bookings) == 1
    assert triggers(service, case_id).count("book_pickup") == 1


def test_a_failing_carrier_leaves_the_case_approved_and_the_next_attempt_books(
    effects: EffectService,
    service: CaseService,
    new_case: NewCase,
    db: InMemoryDatabase,
    carrier: FakeCarrier,
) -> None:
    case_id = new_case("return_refund", "approved")
    entry = last_entry(db, "pickup.requested", case_id)
    carrier.script("fail", "timeout_before")
    # when: the carrier is unavailable twice
    for _ in range(2):
        with pytest.raises(GatewayUnavailable):
            effects.handle(entry)
        # then: the case waits in approved, with its return deadline still armed
        view = service.get(case_id)
        assert view.case.state is CaseState.APPROVED and "pickup" not in view.case.details
        assert view.deadline is not None and view.deadline.kind == "return_shipment"
    # when: the task retries once more
    result = effects.handle(entry)
    # then: booked
    assert result.status is EffectStatus.DONE
    assert service.get(case_id).case.state is CaseState.PICKUP
    assert carrier.calls == 3 and len(carrier.bookings) == 1


def test_a_booking_whose_answer_was_lost_is_the_same_booking_on_retry(
    effects: EffectService,
    service: CaseService,
    new_case: NewCase,
    db: InMemoryDatabase,
    carrier: FakeCarrier,
) -> None:
    case_id = new_case("return_refund", "approved")
    entry = last_entry(db, "pickup.requested", case_id)
    carrier.script("timeout_after")
    with pytest.raises(GatewayUnavailable):
        effects.handle(entry)
    assert len(carrier.bookings) == 1
    effects.handle(entry)
    assert len(carrier.bookings) == 1
    (booked,) = carrier.bookings.values()
    assert service.get(case_id).case.details["pickup"]["pickup_code"] == booked.pickup_code


def test_a_pickup_request_for_a_case_that_moved_on_books_nothing(
    effects: EffectService,
    service: CaseService,
    new_case: NewCase,
    db: InMemoryDatabase,
    carrier: FakeCarrier,
) -> None:
    # given: the buyer shipped by themselves before the worker ran
    case_id = new_case("return_refund", "approved")
    service.fire(case_id, "ship_back", BUYER, data={"tracking_no": "SF1"})
    # when
    result = effects.handle(last_entry(db, "pickup.requested", case_id))
    # then
    assert result.status is EffectStatus.SKIPPED
    assert carrier.calls == 0


def test_every_approval_gets_its_own_booking(
    effects: EffectService,
    service: CaseService,
    new_case: NewCase,
    db: InMemoryDatabase,
    carrier: FakeCarrier,
) -> None:
    # given: a pickup booked, then an admin escalated and the platform ruled for the buyer
    case_id = new_case("return_refund", "approved")
    first = last_entry(db, "pickup.requested", case_id)
    effects.handle(first)
    service.fire(case_id, "escalate", ADMIN, reason=REASON)
    service.fire(case_id, "rule_for_buyer", ADMIN, reason=REASON)
    assert service.get(case_id).case.state is CaseState.APPROVED
    # when: the first approval's request comes back late, then the new one's is handled
    late = effects.handle(first)
    effects.handle(last_entry(db, "pickup.requested", case_id))
    # then: the late one does nothing; the new approval gets a second, distinct booking
    assert late.status is EffectStatus.SKIPPED and "superseded" in late.detail
    assert len(carrier.bookings) == 2
    case = service.get(case_id).case
    assert case.state is CaseState.PICKUP
    assert case.details["pickup"] == list(carrier.bookings.values())[-1].as_data()


def test_a_pickup_given_up_tells_buyer_and_merchant_and_the_buyer_can_still_ship(
    effects: EffectService,
    service: CaseService,
    new_case: NewCase,
    db: InMemoryDatabase,
    notifier: FakeNotifier,
) -> None:
    case_id = new_case("return_refund", "approved")
    entry = last_entry(db, "pickup.requested", case_id)
    # when: the task's retries are exhausted (twice: a redelivery after giving up)
    results = [effects.handle_exhausted(entry, "carrier down") for _ in range(2)]
    # then: told once each; the case still approved, the buyer may ship
    assert {r.status for r in results} == {EffectStatus.FAILED}
    assert sorted(n.recipient for n in notifier.sent()) == ["buyer:b1", "merchant:m1"]
    assert "send the return parcel yourself" in notifier.sent("buyer:b1")[0].message
    service.fire(case_id, "ship_back", BUYER, data={"tracking_no": "SF1"})


def test_a_carrier_refusal_is_definite_and_told_to_buyer_and_merchant(
    effects: EffectService,
    service: CaseService,
    new_case: NewCase,
    db: InMemoryDatabase,
    carrier: FakeCarrier,
    notifier: FakeNotifier,
) -> None:
    case_id = new_case("return_refund", "approved")
    carrier.script("reject")
    result = effects.handle(last_entry(db, "pickup.requested", case_id))
    assert result.status is EffectStatus.FAILED
    assert service.get(case_id).case.state is CaseState.APPROVED
    assert len(notifier.sent()) == 2


def test_the_buyer_is_told_the_pickup_information(
    effects: EffectService, new_case: NewCase, db: InMemoryDatabase, notifier: FakeNotifier
) -> None:
    case_id = new_case("return_refund", "approved")
    effects.handle(last_entry(db, "pickup.requested", case_id))
    moved = last_entry(db, "case.transitioned", case_id)
    assert moved.payload["trigger"] == "book_pickup"
    effects.handle(moved)
    (message,) = notifier.sent("buyer:b1")
    code = db.cases[case_id].details["pickup"]["pickup_code"]
    assert code in message.message and "FAKE-EXPRESS" in message.message


# == refund.requested ==============================================================================


def test_a_refund_executes_once_when_the_same_entry_is_handled_five_times(
    effects: EffectService,
    service: CaseService,
    new_case: NewCase,
    db: InMemoryDatabase,
    payments: FakePaymentGateway,
) -> None:
    case_id = new_case("return_refund", "refunding")
    entry = last_entry(db, "refund.requested", case_id)
    results = [effects.handle(entry) for _ in range(5)]
    assert results[0].status is EffectStatus.DONE
    assert {r.status for r in results[1:]} == {EffectStatus.SKIPPED}
    case = service.get(case_id).case
    assert case.state is CaseState.REFUNDED
    assert payments.payments_count(case_id) == 1
    (paid,) = payments.ledger(case_id)
    assert paid.idempotency_key == entry.payload["idempotency_key"] == case.refund_key
    assert paid.amount == case.refund_amount == entry.payload["amount"]
    assert paid.channel == "wechat_pay" and paid.route == RefundRoute.ORIGINAL_CHANNEL
    assert case.details["refund_reference"] == paid.reference
    assert triggers(service, case_id).count("confirm_refund") == 1


def test_a_second_delivery_racing_the_first_pays_once_and_confirms_once(
    service: CaseService,
    new_case: NewCase,
    db: InMemoryDatabase,
    carrier: FakeCarrier,
    payments: FakePaymentGateway,
    notifier: FakeNotifier,
) -> None:
    case_id = new_case("return_refund", "refunding")
    entry = last_entry(db, "refund.requested", case_id)
    inner: list[Any] = []

    class RacingGateway:
        def refund(self, *args: Any) -> Any:
            if not inner:
                inner.append(EffectService(service, carrier, payments, notifier).handle(entry))
            return payments.refund(*args)

    outer = EffectService(service, carrier, RacingGateway(), notifier).handle(entry)
    assert inner[0].status is EffectStatus.DONE
    assert outer.status is EffectStatus.DONE and "replayed" in outer.detail
    assert payments.payments_count(case_id) == 1
    assert triggers(service, case_id).count("confirm_refund") == 1


def test_a_crash_between_the_payment_and_our_commit_never_pays_twice(
    effects: EffectService,
    service: CaseService,
    new_case: NewCase,
    db: InMemoryDatabase,
    payments: FakePaymentGateway,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    case_id = new_case("return_refund", "refunding")
    entry = last_entry(db, "refund.requested", case_id)
    real_fire = service.fire

    def crash_on_confirm(case_id: int, trigger: str, *args: Any, **kwargs: Any) -> Any:
        if trigger == "confirm_refund":
            raise Crash()
        return real_fire(case_id, trigger, *args, **kwargs)

    # when: the worker dies after the gateway paid, before the case was confirmed
    monkeypatch.setattr(service, "fire", crash_on_confirm)
    with pytest.raises(Crash):
        effects.handle(entry)
    assert payments.payments_count(case_id) == 1
    assert service.get(case_id).case.state is CaseState.REFUNDING
    # and: the broker redelivers the entry to a worker that lives
    monkeypatch.setattr(service, "fire", real_fire)
    result = effects.handle(entry)
    # then: the gateway answers from its ledger; one payment, the case refunded
    assert result.status is EffectStatus.DONE
    assert payments.payments_count(case_id) == 1
    assert service.get(case_id).case.state is CaseState.REFUNDED


def test_paid_but_the_answer_lost_then_the_retry_with_the_same_key_pays_nothing_more(
    effects: EffectService,
    service: CaseService,
    new_case: NewCase,
    db: InMemoryDatabase,
    payments: FakePaymentGateway,
) -> None:
    case_id = new_case("return_refund", "refunding")
    entry = last_entry(db, "refund.requested", case_id)
    payments.script("timeout_after")
    with pytest.raises(GatewayUnavailable):
        effects.handle(entry)
    # the money went out, but we do not know it yet
    assert payments.payments_count(case_id) == 1
    assert service.get(case_id).case.state is CaseState.REFUNDING
    effects.handle(entry)
    assert payments.payments_count(case_id) == 1
    assert service.get(case_id).case.state is CaseState.REFUNDED


def test_a_timeout_before_the_gateway_acted_pays_on_the_retry(
    effects: EffectService,
    service: CaseService,
    new_case: NewCase,
    db: InMemoryDatabase,
    payments: FakePaymentGateway,
) -> None:
    case_id = new_case("return_refund", "refunding")
    entry = last_entry(db, "refund.requested", case_id)
    payments.script("timeout_before")
    with pytest.raises(GatewayUnavailable):
        effects.handle(entry)
    assert payments.ledger(case_id) == []
    effects.handle(entry)
    assert payments.payments_count(case_id) == 1
    assert service.get(case_id).case.state is CaseState.REFUNDED


def test_a_definite_failure_then_the_retry_timer_starts_a_new_attempt_that_pays_once(
    effects: EffectService,
    service: CaseService,
    new_case: NewCase,
    db: InMemoryDatabase,
    payments: FakePaymentGateway,
    clock: FakeClock,
    policy: Policy,
) -> None:
    case_id = new_case("return_refund", "refunding")
    first = last_entry(db, "refund.requested", case_id)
    payments.script("fail")
    # when: the gateway declines
    result = effects.handle(first)
    # then: refund_failed with the error; the retry timer armed; nothing paid
    assert result.status is EffectStatus.FAILED
    case = service.get(case_id).case
    assert case.state is CaseState.REFUND_FAILED
    assert "declined" in case.details["last_refund_error"]
    assert payments.payments_count(case_id) == 0
    # and: a redelivery of the failed attempt does nothing
    assert effects.handle(first).status is EffectStatus.SKIPPED
    # when: the retry timer fires, a new attempt with a new key
    run_retry_timer(service, clock, policy, case_id)
    second = last_entry(db, "refund.requested", case_id)
    assert second.payload["idempotency_key"] != first.payload["idempotency_key"]
    assert effects.handle(second).status is EffectStatus.DONE
    # then: paid once, by the second attempt; the first is on the ledger as failed
    assert service.get(case_id).case.state is CaseState.REFUNDED
    assert payments.payments_count(case_id) == 1
    assert [e.status for e in payments.ledger(case_id)] == [
        RefundStatus.FAILED,
        RefundStatus.SUCCEEDED,
    ]
    # and: stale entries of either attempt change nothing
    assert {effects.handle(e).status for e in (first, second)} == {EffectStatus.SKIPPED}
    assert payments.payments_count(case_id) == 1


@pytest.mark.parametrize("lost", ["timeout_before", "timeout_after"])
def test_exhausted_retries_leave_the_outcome_unknown_and_the_next_attempt_reuses_the_key(
    effects: EffectService,
    service: CaseService,
    new_case: NewCase,
    db: InMemoryDatabase,
    payments: FakePaymentGateway,
    clock: FakeClock,
    policy: Policy,
    lost: Any,
) -> None:
    case_id = new_case("return_refund", "refunding")
    first = last_entry(db, "refund.requested", case_id)
    key = first.payload["idempotency_key"]
    # given: the gateway timed out on every try of the task (paid or not, we cannot tell)
    payments.script(lost, "timeout_before", "timeout_before")
    for _ in range(3):
        with pytest.raises(GatewayUnavailable):
            effects.handle(first)
    # when: the task gives up
    result = effects.handle_exhausted(first, "timed out 3 times")
    # then: refund_failed with the outcome unknown; the key kept for the next attempt
    assert result.status is EffectStatus.FAILED
    case = service.get(case_id).case
    assert case.state is CaseState.REFUND_FAILED
    assert case.details["refund_unsettled"] is True
    assert "outcome unknown" in case.details["last_refund_error"]
    assert not case.details["refund_parked"]
    # and: giving up again (a redelivery) changes nothing
    version = case.version
    effects.handle_exhausted(first, "again")
    assert service.get(case_id).case.version == version
    # when: the durable retry timer fires
    run_retry_timer(service, clock, policy, case_id)
    second = last_entry(db, "refund.requested", case_id)
    # then: the same key, so the gateway can answer a payment it made
    assert second.payload["idempotency_key"] == key
    assert effects.handle(second).status is EffectStatus.DONE
    assert service.get(case_id).case.state is CaseState.REFUNDED
    assert payments.payments_count(case_id) == 1
    assert len(payments.ledger(case_id)) == 1


def test_a_late_redelivery_of_the_first_entry_of_a_reused_key_settles_it_once(
    effects: EffectService,
    service: CaseService,
    new_case: NewCase,
    db: InMemoryDatabase,
    payments: FakePaymentGateway,
    clock: FakeClock,
    policy: Policy,
) -> None:
    case_id = new_case("return_refund", "refunding")
    first = last_entry(db, "refund.requested", case_id)
    payments.script("timeout_after")
    with pytest.raises(GatewayUnavailable):
        effects.handle(first)
    effects.handle_exhausted(first, "timed out")
    run_retry_timer(service, clock, policy, case_id)
    second = last_entry(db, "refund.requested", case_id)
    # when: the first attempt's entry comes back before the second is handled
    assert effects.handle(first).status is EffectStatus.DONE
    assert effects.handle(second).status is EffectStatus.SKIPPED
    assert payments.payments_count(case_id) == 1
    assert triggers(service, case_id).count("confirm_refund") == 1


def test_after_max_attempts_the_case_is_parked_with_a_refund_parked_row(
    effects: EffectService,
    service: CaseService,
    new_case: NewCase,
    db: InMemoryDatabase,
    payments: FakePaymentGateway,
    notifier: FakeNotifier,
    clock: FakeClock,
    policy: Policy,
) -> None:
    case_id = new_case("return_refund", "refunding")
    attempts = policy.refund_retry.max_attempts
    fails: list[Behaviour] = ["fail"] * attempts
    payments.script(*fails)
    delays = []
    for attempt in range(1, attempts + 1):
        assert effects.handle(last_entry(db, "refund.requested", case_id)).status is (
            EffectStatus.FAILED
        )
        if attempt < attempts:
            deadline = service.get(case_id).deadline
            assert deadline is not None
            delays.append(deadline.due_at - clock.now())
            run_retry_timer(service, clock, policy, case_id)
    # then: the backoff doubled, capped
    assert delays == [policy.refund_retry.delay_after(n) for n in range(1, attempts)]
    assert delays == sorted(delays)
    # and: parked for an admin: no retry timer, a refund.parked row with the reason
    view = service.get(case_id)
    assert view.case.state is CaseState.REFUND_FAILED and view.case.details["refund_parked"]
    assert view.deadline is None
    parked = last_entry(db, "refund.parked", case_id)
    assert parked.payload["attempts"] == attempts
    assert "declined" in parked.payload["error"]
    assert payments.payments_count(case_id) == 0
    assert len({e.idempotency_key for e in payments.ledger(case_id)}) == attempts
    # when: the parked notice is handled (twice)
    for _ in range(2):
        effects.handle(parked)
    # then: the admins and the buyer are told once
    assert len(notifier.sent(ADMINS)) == 1
    assert f"after {attempts} failed tries" in notifier.sent(ADMINS)[0].message
    assert len(notifier.sent("buyer:b1")) == 1
    # and: an admin can still retry by hand; that attempt pays
    service.fire(case_id, "retry_refund", ADMIN, reason=REASON)
    effects.handle(last_entry(db, "refund.requested", case_id))
    assert service.get(case_id).case.state is CaseState.REFUNDED
    assert payments.payments_count(case_id) == 1


def test_unknown_outcomes_back_off_and_park_after_max_attempts_too(
    effects: EffectService,
    service: CaseService,
    new_case: NewCase,
    db: InMemoryDatabase,
    payments: FakePaymentGateway,
    clock: FakeClock,
    policy: Policy,
) -> None:
    # given: a gateway that never answers; each round the task gives up
    case_id = new_case("return_refund", "refunding")
    delays = []
    for _ in range(policy.refund_retry.max_attempts):
        effects.handle_exhausted(last_entry(db, "refund.requested", case_id), "timed out")
        deadline = service.get(case_id).deadline
        if deadline is None:
            break
        delays.append(deadline.due_at - clock.now())
        run_retry_timer(service, clock, policy, case_id)
    # then: one key throughout (nothing can be paid twice), growing delays, then parked
    case = service.get(case_id).case
    keys = {e.payload["idempotency_key"] for e in entries(db, "refund.requested", case_id)}
    assert keys == {case.refund_key}
    assert delays == [policy.refund_retry.delay_after(n) for n in range(1, len(delays) + 1)]
    assert len(delays) == policy.refund_retry.max_attempts - 1
    assert case.state is CaseState.REFUND_FAILED and case.details["refund_parked"] is True
    parked = last_entry(db, "refund.parked", case_id)
    assert "outcome unknown" in parked.payload["error"]
    assert payments.calls == 0


def test_a_bank_transfer_refund_carries_the_account_to_the_gateway(
    effects: EffectService,
    service: CaseService,
    new_case: NewCase,
    db: InMemoryDatabase,
    payments: FakePaymentGateway,
) -> None:
    case_id = new_case("return_refund", "awaiting_bank_account")
    effects.handle(last_entry(db, "bank_account.requested", case_id))
    account = {"holder": "Li Lei", "bank": "ICBC", "account_no": "6222020200112233"}
    service.fire(case_id, "provide_bank_account", BUYER, data=account)
    effects.handle(last_entry(db, "refund.requested", case_id))
    assert service.get(case_id).case.state is CaseState.REFUNDED
    paid = [e for e in payments.ledger(case_id) if e.status is RefundStatus.SUCCEEDED]
    assert [e.route for e in paid] == [RefundRoute.BANK_TRANSFER]


def test_a_refund_of_nothing_is_confirmed_without_calling_the_gateway(
    effects: EffectService,
    service: CaseService,
    new_case: NewCase,
    db: InMemoryDatabase,
    payments: FakePaymentGateway,
) -> None:
    # given: a missing gift worth the whole item took the refund to zero
    case_id = new_case(
        "return_refund", "received", gifts=[{"sku": "G", "quantity": 1, "value": ITEM_PRICE}]
    )
    service.fire(case_id, "inspect", MERCHANT, data={"gifts_missing": ["G"]})
    assert service.get(case_id).case.refund_amount == 0
    effects.handle(last_entry(db, "refund.requested", case_id))
    assert service.get(case_id).case.state is CaseState.REFUNDED
    assert payments.calls == 0


def test_a_payment_made_while_an_admin_closed_the_case_is_reported_to_the_admins(
    service: CaseService,
    new_case: NewCase,
    db: InMemoryDatabase,
    carrier: FakeCarrier,
    payments: FakePaymentGateway,
    notifier: FakeNotifier,
) -> None:
    case_id = new_case("return_refund", "refunding")
    entry = last_entry(db, "refund.requested", case_id)

    class AdminClosesMeanwhile:
        def refund(self, *args: Any) -> Any:
            service.fire(case_id, "force_close", ADMIN, reason=REASON)
            return payments.refund(*args)

    # when: the gateway pays while an admin closes the case
    result = EffectService(service, carrier, AdminClosesMeanwhile(), notifier).handle(entry)
    # then: the payment cannot be recorded on the case; the admins are told to reconcile
    assert result.status is EffectStatus.SKIPPED
    assert "reported to the admins" in result.detail
    assert payments.payments_count(case_id) == 1
    (alert,) = notifier.sent(ADMINS)
    assert "reconcile" in alert.message
    # a redelivery finds the case closed and calls nobody
    calls = payments.calls
    effects = EffectService(service, carrier, payments, notifier)
    assert effects.handle(entry).status is EffectStatus.SKIPPED
    assert payments.calls == calls and len(notifier.sent(ADMINS)) == 1


def test_a_payment_made_while_the_case_was_escalated_is_settled_after_the_ruling(
    service: CaseService,
    new_case: NewCase,
    db: InMemoryDatabase,
    carrier: FakeCarrier,
    payments: FakePaymentGateway,
    notifier: FakeNotifier,
) -> None:
    case_id = new_case("return_refund", "refunding")
    entry = last_entry(db, "refund.requested", case_id)

    class AdminEscalatesMeanwhile:
        def refund(self, *args: Any) -> Any:
            service.fire(case_id, "escalate", ADMIN, reason=REASON)
            return payments.refund(*args)

    result = EffectService(service, carrier, AdminEscalatesMeanwhile(), notifier).handle(entry)
    assert result.status is EffectStatus.SKIPPED and "same key" in result.detail
    assert notifier.sent(ADMINS) == []
    # when: the platform rules for the buyer, the refund resumes with the same key
    service.fire(case_id, "rule_for_buyer", ADMIN, reason=REASON)
    again = last_entry(db, "refund.requested", case_id)
    assert again.payload["idempotency_key"] == entry.payload["idempotency_key"]
    EffectService(service, carrier, payments, notifier).handle(again)
    # then: answered from the ledger; one payment
    assert service.get(case_id).case.state is CaseState.REFUNDED
    assert payments.payments_count(case_id) == 1


# == notifications =================================================================================


def test_notifications_are_sent_once_per_recipient_whatever_the_redeliveries(
    effects: EffectService, new_case: NewCase, db: InMemoryDatabase, notifier: FakeNotifier
) -> None:
    case_id = new_case("return_refund")
    entry = last_entry(db, "case.transitioned", case_id)
    # given: the notifier fails on the merchant's message, then loses an answer
    notifier.script("ok", "fail")
    with pytest.raises(GatewayUnavailable):
        effects.handle(entry)
    notifier.script("ok", "timeout_after")
    with pytest.raises(GatewayUnavailable):
        effects.handle(entry)
    # when: delivered twice more
    effects.handle(entry)
    effects.handle(entry)
    # then: each recipient got the message once
    sent = notifier.sent()
    assert sorted(n.recipient for n in sent) == ["buyer:b1", "merchant:m1"]
    assert {n.key for n in sent} == {
        f"notify-{entry.id}-buyer:b1",
        f"notify-{entry.id}-merchant:m1",
    }
    assert all("-> submitted (submit)" in n.message for n in sent)


def test_notices_of_many_entries_go_out_in_one_call_keyed_as_single_ones(
    effects: EffectService, new_case: NewCase, db: InMemoryDatabase, notifier: FakeNotifier
) -> None:
    first = last_entry(db, "case.transitioned", new_case("return_refund"))
    second = last_entry(db, "dispute.opened", new_case("return_refund", "disputed", order_id="o2"))
    # given: the first entry was already delivered by a single task
    effects.handle(first)
    calls = notifier.calls
    # when: both come in one batch
    results = effects.notify_many([first, second])
    # then: one call to the notifier, and nobody hears of the first entry twice
    assert notifier.calls == calls + 1
    assert [(r.entry_id, r.status) for r in results] == [
        (first.id, EffectStatus.DONE),
        (second.id, EffectStatus.DONE),
    ]
    keys = sorted(n.key for n in notifier.sent())
    assert keys == sorted(
        [f"notify-{first.id}-buyer:b1", f"notify-{first.id}-merchant:m1"]
        + [f"notify-{second.id}-{who}" for who in ("admins", "buyer:b1", "merchant:m1")]
    )


def test_a_batch_of_notices_refuses_an_entry_that_is_not_one(
    effects: EffectService, new_case: NewCase, db: InMemoryDatabase, notifier: FakeNotifier
) -> None:
    notice = last_entry(db, "case.transitioned", new_case("return_refund"))
    pickup = last_entry(
        db, "pickup.requested", new_case("return_refund", "approved", order_id="o2")
    )
    with pytest.raises(ValueError, match=r"pickup\.requested is not a notice"):
        effects.notify_many([notice, pickup])
    assert notifier.sent() == []


def test_a_dispute_is_told_to_both_parties_and_the_admins(
    effects: EffectService, new_case: NewCase, db: InMemoryDatabase, notifier: FakeNotifier
) -> None:
    case_id = new_case("return_refund", "disputed")
    result = effects.handle(last_entry(db, "dispute.opened", case_id))
    assert result.status is EffectStatus.DONE
    assert sorted(n.recipient for n in notifier.sent()) == ["admins", "buyer:b1", "merchant:m1"]


def test_the_buyer_is_asked_for_a_bank_account_and_reminded(
    effects: EffectService,
    service: CaseService,
    new_case: NewCase,
    db: InMemoryDatabase,
    notifier: FakeNotifier,
    clock: FakeClock,
) -> None:
    case_id = new_case("return_refund", "awaiting_bank_account")
    effects.handle(last_entry(db, "bank_account.requested", case_id))
    deadline = service.get(case_id).deadline
    assert deadline is not None
    clock.set(deadline.due_at)
    service.run_due_timers()
    reminder = last_entry(db, "bank_account.requested", case_id)
    assert reminder.payload["kind"] == "reminder"
    effects.handle(reminder)
    messages = [n.message for n in notifier.sent("buyer:b1")]
    assert len(messages) == 2 and "(reminder)" in messages[1]
    assert all("bank account" in m for m in messages)


# == the replacement shipment ======================================================================


def test_the_merchant_has_the_replacement_shipped_once(
    effects: EffectService, service: CaseService, new_case: NewCase, shipper: FakeShipper
) -> None:
    case_id = new_case("exchange", "inspected")
    first = effects.ship_to_buyer(case_id, MERCHANT)
    again = effects.ship_to_buyer(case_id, MERCHANT)
    case = service.get(case_id).case
    assert case.state is CaseState.SHIPPED_TO_BUYER
    (shipment,) = shipper.shipments.values()
    assert case.details["outbound_tracking_no"] == shipment.tracking_no
    assert not first.replayed and again.replayed
    assert triggers(service, case_id).count("ship_replacement") == 1


def test_the_repaired_goods_ship_with_ship_repaired(
    effects: EffectService, service: CaseService, new_case: NewCase
) -> None:
    case_id = new_case("repair", "inspected")
    effects.ship_to_buyer(case_id, MERCHANT)
    assert triggers(service, case_id)[-1] == "ship_repaired"


def test_only_the_cases_merchant_ships_and_only_exchanges_and_repairs(
    effects: EffectService, new_case: NewCase, shipper: FakeShipper
) -> None:
    exchange = new_case("exchange", "inspected")
    with pytest.raises(Forbidden):
        effects.ship_to_buyer(exchange, OTHER_MERCHANT)
    refund = new_case("return_refund", "received", order_id="o2")
    with pytest.raises(InvalidInput):
        effects.ship_to_buyer(refund, MERCHANT)
    assert shipper.calls == 0


# == wiring ========================================================================================


def test_every_topic_the_engine_writes_has_a_task_and_a_retry_policy(
    effects: EffectService,
    service: CaseService,
    new_case: NewCase,
    db: InMemoryDatabase,
    policy: Policy,
    clock: FakeClock,
    payments: FakePaymentGateway,
) -> None:
    # given: cases that went through every kind of outbox row
    new_case("return_refund", "disputed")
    new_case("exchange", "approved", order_id="o2")
    new_case("return_refund", "awaiting_bank_account", order_id="o3")
    parked = new_case("refund_only", "refunding", order_id="o4")
    fails: list[Behaviour] = ["fail"] * policy.refund_retry.max_attempts
    payments.script(*fails)
    while (
        service.get(parked).case.state is not CaseState.REFUND_FAILED
        or service.get(parked).deadline
    ):
        if service.get(parked).case.state is CaseState.REFUND_FAILED:
            run_retry_timer(service, clock, policy, parked)
        effects.handle(last_entry(db, "refund.requested", parked))
    topics = {e.topic for e in db.outbox}
    # then: each has a task, each task a retry policy, and handle() knows them all
    assert topics == set(effects_for_topic)
    assert set(effects_for_topic.values()) == set(TASK_RETRY)
    for entry in db.outbox:
        assert effects.handle(entry).status is not None


def test_an_entry_survives_the_trip_through_the_broker() -> None:
    entry = OutboxEntry(
        7,
        "refund.requested",
        3,
        {"idempotency_key": "refund-3-1", "amount": 100},
        datetime(2026, 11, 20, 2, 0, tzinfo=UTC),
        attempts=2,
    )
    wire = json.loads(json.dumps(entry_to_message(entry)))
    assert entry_from_message(wire) == entry


def test_retry_delays_double_up_to_the_cap() -> None:
    policy = TASK_RETRY["aftersales.execute_refund"]
    delays = [policy.delay(n) for n in range(10)]
    assert delays[:3] == [5, 10, 20]
    assert max(delays) == policy.max_seconds == delays[-1]


def test_handling_an_unknown_topic_does_nothing(effects: EffectService, new_case: NewCase) -> None:
    case_id = new_case("return_refund")
    entry = OutboxEntry(99, "no.such.topic", case_id, {}, datetime.now(UTC))
    assert effects.handle(entry).status is EffectStatus.SKIPPED


def test_timers_are_untouched_by_effects(
    effects: EffectService, new_case: NewCase, db: InMemoryDatabase
) -> None:
    case_id = new_case("return_refund", "approved")
    effects.handle(last_entry(db, "pickup.requested", case_id))
    live = [t for t in db.timers.values() if t.status is TimerStatus.PENDING]
    assert [t.kind for t in live] == ["return_shipment"]
