"""Racing submitters on one order, on real databases: the order's row lock (``SELECT ... FOR
UPDATE`` on PostgreSQL, ``BEGIN IMMEDIATE`` on SQLite) keeps every line and the order within
their caps however the submissions interleave (issue 13, item 3)."""

from __future__ import annotations

import threading
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from config.policy import load_policy
from persistence.unit_of_work import SqlUnitOfWorkFactory
from workflow.clock import FakeClock
from workflow.errors import AftersalesError, PolicyRefusal
from workflow.model import Actor
from workflow.orders import account
from workflow.orders_service import OrderService
from workflow.service import CaseService
from workflow.states import Role

NOW = datetime(2026, 11, 20, 2, 0, tzinfo=UTC)
RACERS = 6


def _order(lines: list[tuple[str, int, int]], paid: int) -> dict[str, Any]:
    return {
        "order_id": "o-race",
        "buyer_id": "b1",
        "merchant_id": "m1",
        "payment": {"channel": "wechat_pay", "amount": paid, "paid_at": "2026-11-15T10:00:00Z"},
        "delivered_at": "2026-11-18T10:00:00Z",
        "lines": [
            {"sku": sku, "quantity": quantity, "unit_price": price, "category": "clothing"}
            for sku, quantity, price in lines
        ],
        "gifts": [],
    }


def _application(sku: str, quantity: int = 1) -> dict[str, Any]:
    return {
        "type": "return_refund",
        "order_id": "o-race",
        "buyer_id": "b1",
        "reason": "no_reason",
        "items": [{"sku": sku, "quantity": quantity}],
    }


def _race(service: CaseService, applications: list[dict[str, Any]]) -> list[Any]:
    """Each application submitted by its own thread on its own connection, all released at
    once; what each got (a view or the error)."""
    barrier = threading.Barrier(len(applications))
    outcomes: list[Any] = [None] * len(applications)

    def submit(index: int) -> None:
        barrier.wait()
        try:
            outcomes[index] = service.submit(applications[index])
        except AftersalesError as error:
            outcomes[index] = error
        except BaseException as error:  # surfaced below; a thread cannot fail the test itself
            outcomes[index] = error

    threads = [threading.Thread(target=submit, args=(i,)) for i in range(len(applications))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return outcomes


def _setup(uow_factory: SqlUnitOfWorkFactory, order: dict[str, Any]) -> CaseService:
    service = CaseService(uow_factory, FakeClock(NOW), load_policy())
    orders = OrderService(uow_factory, service.clock, service.policy)
    assert orders.import_orders([order], Actor(Role.ADMIN)).imported == 1
    return service


def _accepted(outcomes: list[Any]) -> list[Any]:
    unexpected = [o for o in outcomes if isinstance(o, BaseException)]
    assert all(isinstance(o, PolicyRefusal) for o in unexpected), unexpected
    return [o for o in outcomes if not isinstance(o, BaseException)]


def test_racing_submitters_never_claim_more_units_than_ordered(
    backend: str, uow_factory: SqlUnitOfWorkFactory
) -> None:
    # given: 3 units of A; when: six buyers' submissions for one unit each race
    service = _setup(uow_factory, _order([("A", 3, 1_000)], 3_000))
    outcomes = _race(service, [_application("A") for _ in range(RACERS)])
    # then: exactly three got a case, the others were refused by the per-unit rule
    accepted = _accepted(outcomes)
    assert len(accepted) == 3
    refused = [o for o in outcomes if isinstance(o, PolicyRefusal)]
    assert {r.rule for r in refused} == {"one_open_case_per_item"}
    _assert_within_caps(uow_factory)


def test_racing_submitters_never_claim_more_than_was_paid(
    backend: str, uow_factory: SqlUnitOfWorkFactory
) -> None:
    """Issue 13's ¥199 refunded ¥699, raced: three lines of ¥199 on an order paid ¥199 (a
    coupon), each applied for at once: together they claim at most ¥199."""
    service = _setup(uow_factory, _order([(sku, 1, 19_900) for sku in "ABC"], 19_900))
    outcomes = _race(service, [_application(sku) for sku in "ABC"])
    accepted = _accepted(outcomes)
    assert sum(view.case.refund_amount for view in accepted) == 19_900
    _assert_within_caps(uow_factory)


def _assert_within_caps(uow_factory: Callable[[], Any]) -> None:
    with uow_factory() as uow:
        order = uow.orders.get("o-race")
        cases = uow.cases.of_orders(["o-race"]).get("o-race", [])
    accounted = account(order, cases)
    for line in accounted.lines:
        assert line.open_quantity + line.refunded_quantity <= line.quantity, line
    assert accounted.refunded + accounted.pending <= accounted.paid
