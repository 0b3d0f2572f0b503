"""Side effects on real databases: refunds execute exactly once against the SQL ledger.

The fake payment gateway keeps its ledger in the service's database (its default), in its own
table and on its own connections, committed before each call returns: what it counts are payments
a crashed worker cannot take back. Runs on SQLite and on PostgreSQL.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from adapters.fake_gateways import (
    FakeCarrier,
    FakeNotifier,
    FakePaymentGateway,
    fake_gateway_payments,
)
from config.policy import Policy, load_policy
from persistence import tables
from persistence.unit_of_work import SqlUnitOfWorkFactory
from workflow.clock import FakeClock
from workflow.effects import EffectResult, EffectService, EffectStatus
from workflow.gateways import GatewayUnavailable, RefundOutcome
from workflow.model import Actor, OutboxEntry, RefundRoute
from workflow.payloads import BankAccount
from workflow.service import CaseService
from workflow.states import CaseState, Role

from .conftest import submit_with_order

NOW = datetime(2026, 11, 20, 2, 0, tzinfo=UTC)
BUYER = Actor(Role.BUYER, "b1")
MERCHANT = Actor(Role.MERCHANT, "m1")
CARRIER = Actor(Role.CARRIER)
RACERS = 4


class Crash(BaseException):
    """The worker dies (not an ``Exception``: nothing on the way may catch it)."""


def application(order_id: str = "o-1") -> dict[str, Any]:
    return {
        "type": "return_refund",
        "order_id": order_id,
        "buyer_id": "b1",
        "merchant_id": "m1",
        "category": "electronics",
        "reason": "no_reason",
        "payment": {"channel": "alipay", "amount": 59_900, "paid_at": "2026-11-15T10:00:00+08:00"},
        "delivered_at": "2026-11-18T15:00:00+08:00",
        "items": [{"sku": "phone-case", "quantity": 1, "unit_price": 59_900}],
    }


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(NOW)


@pytest.fixture
def policy() -> Policy:
    return load_policy()


@pytest.fixture
def service(uow_factory: SqlUnitOfWorkFactory, clock: FakeClock, policy: Policy) -> CaseService:
    return CaseService(uow_factory, clock, policy)


@pytest.fixture
def payments(database_url: str, clock: FakeClock) -> FakePaymentGateway:
    return FakePaymentGateway(database_url, clock=clock)


@pytest.fixture
def notifier(database_url: str, clock: FakeClock) -> FakeNotifier:
    return FakeNotifier(database_url, clock=clock)


@pytest.fixture
def carrier(clock: FakeClock) -> FakeCarrier:
    return FakeCarrier(clock=clock)


@pytest.fixture
def effects(
    service: CaseService,
    carrier: FakeCarrier,
    payments: FakePaymentGateway,
    notifier: FakeNotifier,
) -> EffectService:
    return EffectService(service, carrier, payments, notifier)


def outbox(engine: Engine, topic: str, case_id: int) -> list[OutboxEntry]:
    table = tables.outbox
    query = (
        sa.select(table.c.id, table.c.topic, table.c.case_id, table.c.payload, table.c.created_at)
        .where(table.c.topic == topic, table.c.case_id == case_id)
        .order_by(table.c.id)
    )
    with engine.connect() as connection:
        rows = connection.execute(query).all()
    return [OutboxEntry(r.id, r.topic, r.case_id, r.payload, r.created_at) for r in rows]


def last(engine: Engine, topic: str, case_id: int) -> OutboxEntry:
    found = outbox(engine, topic, case_id)
    assert found, f"no {topic} row for case {case_id}"
    return found[-1]


def refunding_case(service: CaseService, order_id: str = "o-1") -> int:
    case_id = submit_with_order(service, application(order_id)).case.id
    assert case_id is not None
    service.fire(case_id, "approve", MERCHANT)
    service.fire(case_id, "ship_back", BUYER, data={"tracking_no": f"SF-{order_id}"})
    service.fire(case_id, "record_return_delivery", CARRIER)
    service.fire(case_id, "confirm_receipt", MERCHANT)
    service.fire(case_id, "inspect", MERCHANT)
    assert service.get(case_id).case.state is CaseState.REFUNDING
    return case_id


def confirmations(service: CaseService, case_id: int) -> int:
    return [r.trigger for r in service.history(case_id)].count("confirm_refund")


def retry_timer(service: CaseService, clock: FakeClock, case_id: int) -> None:
    deadline = service.get(case_id).deadline
    assert deadline is not None and deadline.kind == "refund_retry"
    clock.set(deadline.due_at)
    assert [run.fired for run in service.run_due_timers()] == [True]


def race(calls: list[Callable[[], EffectResult]]) -> list[EffectResult | BaseException]:
    """Run the calls at once on separate threads (separate connections)."""
    barrier = threading.Barrier(len(calls), timeout=30)
    results: list[EffectResult | BaseException] = [RuntimeError("did not run")] * len(calls)

    def run(index: int, call: Callable[[], EffectResult]) -> None:
        barrier.wait()
        try:
            results[index] = call()
        except Exception as error:
            results[index] = error

    threads = [threading.Thread(target=run, args=(i, c)) for i, c in enumerate(calls)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    return results


# == exactly once ==================================================================================


def test_the_ledger_lives_in_the_service_database_in_its_own_table(
    engine: Engine, payments: FakePaymentGateway
) -> None:
    assert sa.inspect(engine).has_table(fake_gateway_payments.name)
    assert fake_gateway_payments.name not in tables.metadata.tables


def test_a_refund_entry_handled_five_times_pays_once(
    effects: EffectService, service: CaseService, engine: Engine, payments: FakePaymentGateway
) -> None:
    case_id = refunding_case(service)
    entry = last(engine, "refund.requested", case_id)
    statuses = [effects.handle(entry).status for _ in range(5)]
    assert statuses == [EffectStatus.DONE] + [EffectStatus.SKIPPED] * 4
    case = service.get(case_id).case
    assert case.state is CaseState.REFUNDED
    assert payments.payments_count(case_id) == 1
    assert payments.amount_paid(case_id) == case.refund_amount
    assert confirmations(service, case_id) == 1


def test_deliveries_racing_at_the_gateway_pay_once_and_confirm_once(
    service: CaseService,
    engine: Engine,
    carrier: FakeCarrier,
    payments: FakePaymentGateway,
    notifier: FakeNotifier,
) -> None:
    # given: workers that all read the case before any reaches the gateway
    case_id = refunding_case(service)
    entry = last(engine, "refund.requested", case_id)
    at_gateway = threading.Barrier(RACERS, timeout=30)

    class Together:
        def refund(
            self,
            key: str,
            case_id: int,
            amount_fen: int,
            channel: str,
            route: RefundRoute,
            bank_account: BankAccount | None,
        ) -> RefundOutcome:
            at_gateway.wait()
            return payments.refund(key, case_id, amount_fen, channel, route, bank_account)

    effects = EffectService(service, carrier, Together(), notifier)
    # when: they handle the same entry at once
    results = race([lambda: effects.handle(entry) for _ in range(RACERS)])
    # then: every one done (the confirmation replayed for all but one); one payment
    assert all(isinstance(r, EffectResult) for r in results), results
    assert {r.status for r in results if isinstance(r, EffectResult)} == {EffectStatus.DONE}
    assert payments.payments_count(case_id) == 1
    assert confirmations(service, case_id) == 1
    assert service.get(case_id).case.state is CaseState.REFUNDED


def test_a_crash_after_the_payment_and_before_our_commit_pays_once(
    effects: EffectService,
    service: CaseService,
    engine: Engine,
    payments: FakePaymentGateway,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    case_id = refunding_case(service)
    entry = last(engine, "refund.requested", case_id)
    real_fire = service.fire

    def crash_on_confirm(case_id: int, trigger: str, *args: Any, **kwargs: Any) -> Any:
        if trigger == "confirm_refund":
            raise Crash()
        return real_fire(case_id, trigger, *args, **kwargs)

    monkeypatch.setattr(service, "fire", crash_on_confirm)
    with pytest.raises(Crash):
        effects.handle(entry)
    assert payments.payments_count(case_id) == 1
    assert service.get(case_id).case.state is CaseState.REFUNDING
    monkeypatch.setattr(service, "fire", real_fire)
    assert effects.handle(entry).status is EffectStatus.DONE
    assert payments.payments_count(case_id) == 1
    assert service.get(case_id).case.state is CaseState.REFUNDED


def test_paid_but_the_answer_lost_is_answered_from_the_ledger_on_retry(
    effects: EffectService, service: CaseService, engine: Engine, payments: FakePaymentGateway
) -> None:
    case_id = refunding_case(service)
    entry = last(engine, "refund.requested", case_id)
    payments.script("timeout_after")
    with pytest.raises(GatewayUnavailable):
        effects.handle(entry)
    assert payments.payments_count(case_id) == 1
    effects.handle(entry)
    assert payments.payments_count(case_id) == 1
    assert service.get(case_id).case.state is CaseState.REFUNDED


def test_given_up_with_the_outcome_unknown_the_timer_retries_with_the_same_key(
    effects: EffectService,
    service: CaseService,
    engine: Engine,
    payments: FakePaymentGateway,
    clock: FakeClock,
) -> None:
    case_id = refunding_case(service)
    first = last(engine, "refund.requested", case_id)
    payments.script("timeout_after", "timeout_before")
    for _ in range(2):
        with pytest.raises(GatewayUnavailable):
            effects.handle(first)
    assert effects.handle_exhausted(first, "timed out").status is EffectStatus.FAILED
    assert service.get(case_id).case.state is CaseState.REFUND_FAILED
    retry_timer(service, clock, case_id)
    second = last(engine, "refund.requested", case_id)
    assert second.id != first.id
    assert second.payload["idempotency_key"] == first.payload["idempotency_key"]
    assert effects.handle(second).status is EffectStatus.DONE
    assert payments.payments_count(case_id) == 1
    assert len(payments.ledger(case_id)) == 1
    assert service.get(case_id).case.state is CaseState.REFUNDED


def test_a_definite_failure_is_retried_with_a_new_key_that_pays_once(
    effects: EffectService,
    service: CaseService,
    engine: Engine,
    payments: FakePaymentGateway,
    clock: FakeClock,
) -> None:
    case_id = refunding_case(service)
    first = last(engine, "refund.requested", case_id)
    payments.script("fail")
    assert effects.handle(first).status is EffectStatus.FAILED
    retry_timer(service, clock, case_id)
    second = last(engine, "refund.requested", case_id)
    assert second.payload["idempotency_key"] != first.payload["idempotency_key"]
    for entry in (second, second, first):
        effects.handle(entry)
    assert payments.payments_count(case_id) == 1
    assert len(payments.ledger(case_id)) == 2
    assert service.get(case_id).case.state is CaseState.REFUNDED


def test_refunds_of_many_cases_each_pay_once_under_duplicate_deliveries(
    effects: EffectService, service: CaseService, engine: Engine, payments: FakePaymentGateway
) -> None:
    cases = [refunding_case(service, order_id=f"o-{n}") for n in range(3)]
    entries = [last(engine, "refund.requested", case_id) for case_id in cases]
    payments.script("timeout_after", "ok", "timeout_before")
    for entry in entries * 3:
        try:
            effects.handle(entry)
        except GatewayUnavailable:
            continue
    assert [payments.payments_count(case_id) for case_id in cases] == [1, 1, 1]
    with engine.connect() as connection:
        paid = connection.execute(
            sa.select(sa.func.count()).select_from(fake_gateway_payments)
        ).scalar_one()
    assert paid == 3
    assert {service.get(case_id).case.state for case_id in cases} == {CaseState.REFUNDED}


# == pickups and notifications =====================================================================


def test_a_pickup_entry_delivered_at_once_to_several_workers_books_once(
    effects: EffectService, service: CaseService, engine: Engine, carrier: FakeCarrier
) -> None:
    case_id = submit_with_order(service, application()).case.id
    assert case_id is not None
    service.fire(case_id, "approve", MERCHANT)
    entry = last(engine, "pickup.requested", case_id)
    results = race([lambda: effects.handle(entry) for _ in range(RACERS)])
    assert all(isinstance(r, EffectResult) for r in results), results
    assert len(carrier.bookings) == 1
    assert [r.trigger for r in service.history(case_id)].count("book_pickup") == 1
    assert service.get(case_id).case.state is CaseState.PICKUP


def test_notifications_are_sent_once_under_redelivery(
    effects: EffectService, service: CaseService, engine: Engine, notifier: FakeNotifier
) -> None:
    case_id = submit_with_order(service, application()).case.id
    assert case_id is not None
    entry = last(engine, "case.transitioned", case_id)
    notifier.script("ok", "timeout_after")
    with pytest.raises(GatewayUnavailable):
        effects.handle(entry)
    results = race([lambda: effects.handle(entry) for _ in range(RACERS)])
    assert all(isinstance(r, EffectResult) for r in results), results
    assert sorted(n.recipient for n in notifier.sent()) == ["buyer:b1", "merchant:m1"]


def test_batches_of_notices_racing_single_ones_deliver_each_key_once(
    effects: EffectService, service: CaseService, engine: Engine, notifier: FakeNotifier
) -> None:
    entries = []
    for n in range(3):
        case_id = submit_with_order(service, application(f"o-{n}")).case.id
        assert case_id is not None
        entries.append(last(engine, "case.transitioned", case_id))
    # given: batches overlapping each other and single deliveries of the same entries, at once
    runs = [lambda: effects.notify_many(entries), lambda: effects.notify_many(entries[1:])]
    runs += [lambda entry=entry: effects.handle(entry) for entry in entries]
    results = race(runs)
    assert not [r for r in results if isinstance(r, BaseException)], results
    # then: every recipient of every entry heard once
    keys = [n.key for n in notifier.sent()]
    assert sorted(keys) == sorted(
        f"notify-{entry.id}-{who}" for entry in entries for who in ("buyer:b1", "merchant:m1")
    )
