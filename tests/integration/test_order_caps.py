"""Issue 13, item 3: any interleaving of submissions, partial refunds (fewer units received, a
partial amount asked), cancellations and refund failures keeps every order line and every order
within its caps: open + refunded units ≤ ordered, refunded fen ≤ the line's total, all refunds
and open claims ≤ paid.

The same state machine runs on the in-memory stores and, fewer examples, on SQLite (each
example on its own database file).
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import Bundle, RuleBasedStateMachine, invariant, multiple, rule

from config.policy import load_policy
from persistence.db import make_engine
from persistence.migrate import upgrade
from persistence.unit_of_work import SqlUnitOfWorkFactory
from workflow.clock import FakeClock
from workflow.errors import AftersalesError
from workflow.memory import InMemoryUnitOfWorkFactory
from workflow.model import Actor
from workflow.orders import account
from workflow.orders_service import OrderService
from workflow.ports import UnitOfWorkFactory
from workflow.service import CaseService
from workflow.states import CaseState, CaseType, Role

NOW = datetime(2026, 11, 20, 2, 0, tzinfo=UTC)
BUYER, MERCHANT = Actor(Role.BUYER, "b1"), Actor(Role.MERCHANT, "m1")
SYSTEM, CARRIER, PAYMENT = Actor(Role.SYSTEM), Actor(Role.CARRIER), Actor(Role.PAYMENT)

S = CaseState
POLICY = load_policy()
#: One order: A 3 units at 100 fen, B 2 at 250, C 1 at 400 (1 400 fen), paid 1 000 (a coupon).
LINES = {"A": (3, 100), "B": (2, 250), "C": (1, 400)}
PAID = 1_000


def _order() -> dict[str, Any]:
    return {
        "order_id": "o1",
        "buyer_id": "b1",
        "merchant_id": "m1",
        "payment": {"channel": "wechat_pay", "amount": PAID, "paid_at": NOW - timedelta(days=5)},
        "delivered_at": NOW - timedelta(days=2),
        "lines": [
            {"sku": sku, "quantity": quantity, "unit_price": price, "category": "clothing"}
            for sku, (quantity, price) in LINES.items()
        ],
        "gifts": [],
    }


class OrderCaps(RuleBasedStateMachine):
    cases = Bundle("cases")
    #: Set per backend (below).
    make_factory: Callable[[], UnitOfWorkFactory] = InMemoryUnitOfWorkFactory

    def __init__(self) -> None:
        super().__init__()
        self.factory = type(self).make_factory()
        self.service = CaseService(self.factory, FakeClock(NOW), POLICY)
        orders = OrderService(self.factory, self.service.clock, POLICY)
        assert orders.import_orders([_order()], Actor(Role.ADMIN)).imported == 1

    @rule(
        target=cases,
        case_type=st.sampled_from([CaseType.RETURN_REFUND, CaseType.REFUND_ONLY]),
        wanted=st.dictionaries(st.sampled_from(sorted(LINES)), st.integers(1, 4), min_size=1),
        requested=st.none() | st.integers(0, 900),
    )
    def submit(self, case_type: CaseType, wanted: dict[str, int], requested: int | None) -> Any:
        application = {
            "type": case_type.value,
            "order_id": "o1",
            "buyer_id": "b1",
            "reason": "no_reason" if case_type is CaseType.RETURN_REFUND else "missing_item",
            "items": [{"sku": sku, "quantity": units} for sku, units in wanted.items()],
            "requested_amount": requested,
        }
        try:
            return self.service.submit(application).case.id
        except AftersalesError:
            return multiple()

    @rule(
        case_id=cases, received=st.dictionaries(st.sampled_from(sorted(LINES)), st.integers(0, 4))
    )
    def refund(self, case_id: int, received: dict[str, int]) -> None:
        """Approve; for a return ship it back and record the units received (maybe fewer)."""
        case = self.service.get(case_id).case
        data = {"received": [{"sku": s, "quantity": q} for s, q in received.items()]}
        steps: list[tuple[str, Any, dict[str, Any] | None]] = [("approve", MERCHANT, None)]
        if case.type is CaseType.RETURN_REFUND:
            steps += [
                ("ship_back", BUYER, {"tracking_no": f"SF{case_id}"}),
                ("record_return_delivery", CARRIER, {}),
                ("confirm_receipt", MERCHANT, data),
                ("inspect", MERCHANT, {}),
            ]
        self._steps(case_id, steps)

    @rule(case_id=cases, settle=st.booleans())
    def pay(self, case_id: int, settle: bool) -> None:
        """The gateway answers: paid, or failed (then the system retries)."""
        if settle:
            self._steps(case_id, [("confirm_refund", PAYMENT, {"reference": "r"})])
        else:
            self._steps(
                case_id,
                [("fail_refund", PAYMENT, {"error": "declined"}), ("retry_refund", SYSTEM, None)],
            )

    @rule(case_id=cases)
    def cancel(self, case_id: int) -> None:
        self._steps(case_id, [("cancel", BUYER, None)])

    def _steps(self, case_id: int, steps: list[tuple[str, Any, dict[str, Any] | None]]) -> None:
        for trigger, actor, data in steps:
            try:
                self.service.fire(case_id, trigger, actor, data=data)
            except AftersalesError:
                return

    @invariant()
    def within_caps(self) -> None:
        with self.factory() as uow:
            order = uow.orders.get("o1")
            cases = uow.cases.of_orders(["o1"]).get("o1", [])
        assert order is not None
        accounted = account(order, cases)
        for line in accounted.lines:
            assert line.open_quantity + line.refunded_quantity <= line.quantity, accounted
            assert line.refunded_amount <= line.total, accounted
        assert accounted.refunded + accounted.pending <= accounted.paid, accounted
        # a refund pays for no unit that did not come back
        for case in cases:
            if case.state is S.REFUNDED and "received" in case.details:
                units = case.details["received"]
                assert case.refund_amount <= sum(
                    item.unit_price * units.get(item.sku, 0) for item in case.items
                ), case


OrderCaps.TestCase.settings = settings(
    max_examples=60,
    stateful_step_count=25,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
test_order_caps_in_memory = OrderCaps.TestCase


def test_order_caps_on_sqlite(tmp_path: Path) -> None:
    """The same machine on SQLite (each example on a fresh file), fewer examples."""
    counter = iter(range(10**6))

    def sqlite_factory() -> UnitOfWorkFactory:
        url = f"sqlite:///{tmp_path / f'caps-{next(counter)}.db'}"
        upgrade(url)
        return SqlUnitOfWorkFactory(make_engine(url))

    class OnSqlite(OrderCaps):
        make_factory = staticmethod(sqlite_factory)

    OnSqlite.TestCase.settings = settings(
        max_examples=8,
        stateful_step_count=15,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
    )
    OnSqlite.TestCase().runTest()
