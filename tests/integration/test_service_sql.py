"""The service layer on real databases: whole case paths and racing transitions."""

from __future__ import annotations

import itertools
import threading
from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from config.policy import load_policy
from persistence.unit_of_work import SqlUnitOfWorkFactory
from workflow import service as service_module
from workflow.clock import FakeClock
from workflow.errors import AftersalesError, Conflict, NotAllowed
from workflow.model import Actor, TimerStatus
from workflow.orders import account
from workflow.service import CaseService
from workflow.states import CaseState, CaseType, Role

from .conftest import submit_with_order

NOW = datetime(2026, 11, 20, 2, 0, tzinfo=UTC)
BUYER = Actor(Role.BUYER, "b1")
MERCHANT = Actor(Role.MERCHANT, "m1")
SYSTEM = Actor(Role.SYSTEM)
CARRIER = Actor(Role.CARRIER)
PAYMENT = Actor(Role.PAYMENT)
ADMIN = Actor(Role.ADMIN, "ops-1")


def application(case_type: CaseType, order_id: str = "o-1", **overrides: Any) -> dict[str, Any]:
    delivered = None if case_type is CaseType.REFUND_ONLY else "2026-11-18T15:00:00+08:00"
    reason = {
        CaseType.REPAIR: "quality_issue",
        CaseType.REFUND_ONLY: "not_received",
    }.get(case_type, "no_reason")
    app = {
        "type": case_type.value,
        "order_id": order_id,
        "buyer_id": "b1",
        "merchant_id": "m1",
        "category": "electronics",
        "reason": reason,
        "payment": {
            "channel": "wechat_pay",
            "amount": 59_900,
            "paid_at": "2026-11-15T10:00:00+08:00",
        },
        "delivered_at": delivered,
        "items": [{"sku": "phone-case", "quantity": 1, "unit_price": 59_900}],
        "gifts": [{"sku": "sticker", "quantity": 1, "value": 900}],
    }
    app.update(overrides)
    return app


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(NOW)


@pytest.fixture
def service(uow_factory: SqlUnitOfWorkFactory, clock: FakeClock) -> CaseService:
    return CaseService(uow_factory, clock, load_policy())


Step = tuple[str, Actor, dict[str, Any] | None]

RETURN_LEG: list[Step] = [
    ("approve", MERCHANT, None),
    ("book_pickup", SYSTEM, {"carrier": "SF", "pickup_code": "PK-1"}),
    ("ship_back", BUYER, {"tracking_no": "SF100"}),
    ("record_return_delivery", CARRIER, None),
    ("confirm_receipt", MERCHANT, None),
]
PATHS: dict[CaseType, tuple[list[Step], CaseState]] = {
    CaseType.RETURN_REFUND: (
        [
            *RETURN_LEG,
            ("inspect", MERCHANT, {"gifts_missing": ["sticker"]}),
            ("confirm_refund", PAYMENT, {"reference": "wx-1"}),
        ],
        CaseState.REFUNDED,
    ),
    CaseType.EXCHANGE: (
        [
            *RETURN_LEG,
            ("inspect", MERCHANT, None),
            ("ship_replacement", MERCHANT, {"tracking_no": "SF200"}),
            ("record_buyer_delivery", CARRIER, None),
            ("confirm_delivery", BUYER, None),
        ],
        CaseState.EXCHANGED,
    ),
    CaseType.REPAIR: (
        [
            *RETURN_LEG,
            ("inspect", MERCHANT, None),
            ("ship_repaired", MERCHANT, {"tracking_no": "SF300"}),
            ("record_buyer_delivery", CARRIER, None),
            ("confirm_delivery", BUYER, None),
        ],
        CaseState.REPAIRED,
    ),
    CaseType.REFUND_ONLY: (
        [("approve", MERCHANT, None), ("confirm_refund", PAYMENT, {"reference": "wx-2"})],
        CaseState.REFUNDED,
    ),
}


@pytest.mark.parametrize("case_type", list(CaseType), ids=lambda t: t.value)
def test_each_case_type_travels_its_whole_path(
    service: CaseService, uow_factory: SqlUnitOfWorkFactory, case_type: CaseType
) -> None:
    # given a submitted case of this type
    case_id = submit_with_order(service, application(case_type)).case.id
    assert case_id is not None
    steps, outcome = PATHS[case_type]

    # when every party does its part
    for trigger, actor, data in steps:
        service.fire(case_id, trigger, actor, data=data)

    # then it reaches its outcome, the log replays to it, and nothing is left pending
    view = service.get(case_id)
    assert view.case.state is outcome and view.deadline is None
    history = service.history(case_id)
    assert [entry.seq for entry in history] == list(range(1, view.case.version + 1))
    for before, after in itertools.pairwise(history):
        assert after.from_state is before.to_state
    assert history[-1].to_state is outcome
    with uow_factory() as uow:
        order = uow.orders.get("o-1")
        assert order is not None
        line = account(order, [view.case]).line("phone-case")
        assert line is not None and line.open_quantity == 0
    if case_type is CaseType.RETURN_REFUND:
        assert view.case.refund_amount == 59_900 - 900


def test_an_order_not_shipped_is_refunded_in_the_submitting_transaction(
    service: CaseService, monkeypatch: pytest.MonkeyPatch
) -> None:
    """RULES.md C: the case is written and moved on to refunding in one transaction."""
    # given: facts saying the order was never shipped (the order of record does not record
    # shipment yet, hence the patched facts)
    build = service_module._eligibility_facts
    monkeypatch.setattr(
        service_module,
        "_eligibility_facts",
        lambda app, order, line: replace(build(app, order, line), shipped=False),
    )
    # when
    view = submit_with_order(service, application(CaseType.REFUND_ONLY))
    case_id = view.case.id
    assert case_id is not None
    # then: stored as refunding, with its log, and no deadline
    stored = service.get(case_id)
    assert stored.case.state is CaseState.REFUNDING and stored.deadline is None
    assert [r.trigger for r in service.history(case_id)] == [
        "submit",
        "auto_approve",
        "start_refund",
    ]


def test_a_timer_fires_once_from_the_database(
    service: CaseService, uow_factory: SqlUnitOfWorkFactory, clock: FakeClock
) -> None:
    # given a submitted case whose merchant never reviews
    case_id = submit_with_order(service, application(CaseType.RETURN_REFUND)).case.id
    assert case_id is not None

    # when 48 hours pass and the due timers run twice
    clock.advance(timedelta(hours=48))
    first = service.run_due_timers()
    second = service.run_due_timers()

    # then the case was auto-approved exactly once and the next deadline is armed
    assert [run.fired for run in first] == [True] and second == []
    history = service.history(case_id)
    assert [entry.trigger for entry in history] == ["submit", "auto_approve"]
    deadline = service.get(case_id).deadline
    assert deadline is not None and deadline.kind == "return_shipment"
    assert deadline.due_at == clock.now() + timedelta(days=7)
    with uow_factory() as uow:
        fired = uow.timers.get(first[0].timer.id or 0)
    assert fired is not None and fired.status is TimerStatus.FIRED


def _race(service: CaseService, calls: list[Callable[[], object]]) -> list[object]:
    """Run the calls at the same instant on separate threads (separate connections)."""
    barrier = threading.Barrier(len(calls))
    results: list[object] = [None] * len(calls)

    def run(index: int, call: Callable[[], object]) -> None:
        barrier.wait()
        try:
            results[index] = call()
        except AftersalesError as error:
            results[index] = error

    threads = [threading.Thread(target=run, args=(i, c)) for i, c in enumerate(calls)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return results


@pytest.mark.parametrize("attempt", range(5))
def test_conflicting_transitions_one_wins_cleanly(
    service: CaseService, uow_factory: SqlUnitOfWorkFactory, attempt: int
) -> None:
    # given a submitted case read by two merchants' sessions at once
    case_id = submit_with_order(service, application(CaseType.RETURN_REFUND)).case.id
    assert case_id is not None

    # when approve and reject race, both expecting version 1
    results = _race(
        service,
        [
            lambda: service.fire(case_id, "approve", MERCHANT, expected_version=1),
            lambda: service.fire(case_id, "reject", MERCHANT, reason="used", expected_version=1),
        ],
    )

    # then exactly one landed; the other got a conflict (or, having read after the commit, was
    # refused) and left no trace: one log row, one live timer, version 2
    errors = [r for r in results if isinstance(r, AftersalesError)]
    assert len(errors) == 1 and isinstance(errors[0], Conflict | NotAllowed)
    view = service.get(case_id)
    history = service.history(case_id)
    assert view.case.version == 2 and len(history) == 2
    assert history[-1].to_state is view.case.state
    with uow_factory() as uow:
        live = uow.timers.pending(case_id)
    assert live is not None and live.state is view.case.state and live.version == 2


def test_same_idempotency_key_at_once_writes_once(service: CaseService) -> None:
    # given a submitted case
    case_id = submit_with_order(service, application(CaseType.RETURN_REFUND)).case.id
    assert case_id is not None

    # when the same approval with one idempotency key arrives four times at once
    results = _race(
        service,
        [
            lambda: service.fire(case_id, "approve", MERCHANT, idempotency_key="req-7")
            for _ in range(4)
        ],
    )

    # then every caller gets the same result and the log holds it once
    assert not [r for r in results if isinstance(r, Exception)]
    assert [entry.trigger for entry in service.history(case_id)] == ["submit", "approve"]
    assert {r.records[0].seq for r in results} == {2}  # type: ignore[attr-defined]
