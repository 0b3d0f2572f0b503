"""Property-based test: random cases, random triggers by random roles, random jumps in time.

After every step the whole in-memory storage is checked against invariants that hold whatever
happened: states, the transition log, money, timers and the one-open-case-per-item claims.
"""

from __future__ import annotations

from collections import defaultdict
from datetime import timedelta
from typing import Any

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    initialize,
    invariant,
    multiple,
    rule,
)

from config.policy import load_policy
from workflow import engine
from workflow.clock import FakeClock
from workflow.definitions import TRIGGERS, rules_for, states_for
from workflow.errors import Forbidden, InvalidInput, NotAllowed, PolicyRefusal
from workflow.memory import InMemoryUnitOfWorkFactory
from workflow.model import Actor, Case, TimerStatus, TransitionRecord
from workflow.orders import account
from workflow.service import CaseService
from workflow.states import CaseState, CaseType, Role

from .builders import (
    ACTORS,
    ADMIN,
    NOW,
    OTHER_BUYER,
    OTHER_MERCHANT,
    REASON,
    application,
    data_for,
    import_orders,
    item,
    order_for,
    payment,
    submit_with_order,
)

POLICY = load_policy()

#: Orders the cases are drawn from. o1 had an order coupon: its items add up to more than was
#: paid, so the order cap matters; o3 was paid by a channel without refund window.
#: Items are sku: (unit price, units ordered); a case may name some of a line's units.
ORDERS: dict[str, dict[str, Any]] = {
    "o1": {
        "category": "clothing",
        "paid": 30_000,
        "channel": "wechat_pay",
        "items": {"A": (15_000, 3), "B": (15_000, 1), "C": (10_000, 2)},
    },
    "o2": {
        "category": "electronics",
        "paid": 60_000,
        "channel": "alipay",
        "items": {"X": (50_000, 1), "Y": (10_000, 4)},
    },
    "o3": {
        "category": "home",
        "paid": 8_000,
        "channel": "cash_on_delivery",
        "items": {"H": (8_000, 1)},
    },
}
REASONS = {
    CaseType.RETURN_REFUND: ["no_reason", "quality_issue"],
    CaseType.EXCHANGE: ["no_reason", "quality_issue"],
    CaseType.REPAIR: ["quality_issue"],
    CaseType.REFUND_ONLY: ["damaged_in_transit", "missing_item"],
}
#: Well-formed alternatives for some triggers; revisions may ask for more or less money.
DATA_VARIANTS: dict[str, list[dict[str, Any]]] = {
    # The units that came back: all announced, fewer, none.
    "confirm_receipt": [
        {},
        {"received": [{"sku": "A", "quantity": 1}]},
        {"received": [{"sku": "Y", "quantity": 1}]},
        {"received": []},
    ],
    "inspect": [
        {},
        {"gifts_missing": ["G"]},
        {"received": [{"sku": "A", "quantity": 0}, {"sku": "C", "quantity": 1}]},
        {"received": [{"sku": "Y", "quantity": 2}], "gifts_missing": ["G"]},
    ],
    "revise": [
        {"description": "more photos"},
        {},
        {"requested_amount": 1_000},
        {"requested_amount": 30_000},
    ],
}
JUNK_DATA: list[dict[str, Any] | None] = [None, {"junk": 1}, {"tracking_no": ""}, {"note": 5}]
#: Moves that end a case early; a walk prefers the others so cases get far.
ENDINGS = {"cancel", "expire_return", "expire_dispute_window", "rule_for_merchant"}
#: The A.1 / A.5 main path; a walk often follows it so exchanges and repairs complete too.
MAIN_PATH = {
    "approve",
    "ship_back",
    "record_return_delivery",
    "confirm_receipt",
    "inspect",
    "ship_replacement",
    "ship_repaired",
    "record_buyer_delivery",
    "confirm_delivery",
    "confirm_refund",
    "provide_bank_account",
    "revise",
}
NOT_REFUNDING = {CaseState.CANCELLED, CaseState.CLOSED, CaseState.EXCHANGED, CaseState.REPAIRED}
LIVE = {TimerStatus.PENDING, TimerStatus.CLAIMED}


def _expected_timer(case: Case) -> str | None:
    """RULES.md part B (and policy.toml's platform conventions): the deadline each state arms."""
    state, case_type = case.state, case.type
    if state is CaseState.INSPECTED:
        return {
            CaseType.EXCHANGE: "replacement_shipment",
            CaseType.REPAIR: "repair_completion",
        }.get(case_type)
    if state is CaseState.SUBMITTED and case_type is CaseType.REFUND_ONLY and case.delivered_at:
        # RULES.md C: delivered goods are refunded without return only with the merchant's consent.
        return "merchant_consent"
    if state in (CaseState.APPROVED, CaseState.PICKUP):
        return None if case_type is CaseType.REFUND_ONLY else "return_shipment"
    if state is CaseState.AWAITING_BANK_ACCOUNT:
        reminded = case.details.get("bank_account_reminded")
        return "bank_account_escalation" if reminded else "bank_account_reminder"
    if state is CaseState.REFUND_FAILED:
        return None if case.details.get("refund_parked") else "refund_retry"
    return {
        CaseState.SUBMITTED: "merchant_review",
        CaseState.SHIPPED_BACK: "return_transit",
        CaseState.RETURN_DELIVERED: "merchant_receipt",
        CaseState.RECEIVED: "merchant_inspection",
        CaseState.SHIPPED_TO_BUYER: "outbound_transit",
        CaseState.DELIVERED_TO_BUYER: "buyer_confirmation",
        CaseState.REJECTED: "dispute_window",
    }.get(state)


def _check_log(case: Case, log: list[TransitionRecord]) -> None:
    """Replaying the log from submitted reproduces the case's state and version."""
    assert [r.seq for r in log] == list(range(1, len(log) + 1))
    first = log[0]
    assert (first.trigger, first.from_state, first.to_state) == (
        "submit",
        None,
        CaseState.SUBMITTED,
    )
    rows = rules_for(case.type)
    state = CaseState.SUBMITTED
    for record in log[1:]:
        assert record.from_state is state, record
        role = Actor.parse(record.actor).role
        if record.trigger == "extend_deadline":
            assert record.to_state is state and role is Role.ADMIN, record
        else:
            assert any(
                row.trigger == record.trigger
                and state in row.sources
                and row.dest is record.to_state
                and role in row.actors
                for row in rows
            ), record
        state = record.to_state
    assert state is case.state
    assert log[-1].seq == case.version


class CaseWorkflow(RuleBasedStateMachine):
    cases = Bundle("cases")

    def __init__(self) -> None:
        super().__init__()
        self.clock = FakeClock(NOW)
        self.factory = InMemoryUnitOfWorkFactory()
        self.service = CaseService(self.factory, self.clock, POLICY)
        for order_id, order in ORDERS.items():
            lines = [
                {**item(sku, price, quantity), "category": order["category"]}
                for sku, (price, quantity) in order["items"].items()
            ]
            app = application(
                CaseType.RETURN_REFUND,
                now=NOW,
                order_id=order_id,
                payment=payment(order["paid"], NOW - timedelta(days=4), order["channel"]),
            )
            result = import_orders(self.service, order_for(app, lines=lines))
            assert result.imported == 1, result

    # -- steps ------------------------------------------------------------------------------

    @initialize(target=cases)
    def first_case(self) -> Any:
        # order o0: the builders' default order (one item, paid in full)
        app = application(CaseType.RETURN_REFUND, now=NOW, order_id="o0")
        return submit_with_order(self.service, app).case.id

    @rule(
        target=cases,
        case_type=st.sampled_from(list(CaseType)),
        order_id=st.sampled_from(sorted(ORDERS)),
        data=st.data(),
    )
    def submit(self, case_type: CaseType, order_id: str, data: st.DataObject) -> Any:
        order = ORDERS[order_id]
        skus = data.draw(st.lists(st.sampled_from(sorted(order["items"])), min_size=1, unique=True))
        # up to one unit more than the line has: refused, like any over-claim
        items = [
            item(sku, price, data.draw(st.integers(1, ordered + 1)))
            for sku, (price, ordered) in ((sku, order["items"][sku]) for sku in skus)
        ]
        items_amount = sum(i["unit_price"] * i["quantity"] for i in items)
        requested = data.draw(st.none() | st.integers(0, items_amount + 100))
        app = application(
            case_type,
            now=NOW,
            order_id=order_id,
            category=order["category"],
            reason=data.draw(st.sampled_from(REASONS[case_type])),
            payment=payment(order["paid"], NOW - timedelta(days=4), order["channel"]),
            items=items,
            requested_amount=requested,
        )
        try:
            view = self.service.submit(app)
        except (PolicyRefusal, InvalidInput):
            return multiple()
        return view.case.id

    @rule(case_id=cases, steps=st.integers(1, 10), data=st.data())
    def walk(self, case_id: int, steps: int, data: st.DataObject) -> None:
        """A few legal moves in a row, so cases travel far: each a trigger some role may fire
        now (admins, whose moves end cases early, less often)."""
        for _ in range(steps):
            case = self.factory.db.cases[case_id]
            pairs = [
                (trigger, role)
                for role in Role
                for trigger in engine.allowed_triggers(case, ACTORS[role])
            ]
            if not pairs:
                return
            onward = [p for p in pairs if p[1] is not Role.ADMIN and p[0] not in ENDINGS]
            main = [p for p in onward if p[0] in MAIN_PATH]
            choice = data.draw(st.integers(0, 5))
            if main and choice >= 3:
                pairs = main
            elif onward and choice >= 1:
                pairs = onward
            trigger, role = data.draw(st.sampled_from(pairs))
            self._fire(case_id, trigger, ACTORS[role], data)

    @rule(
        case_id=cases,
        trigger=st.sampled_from([*TRIGGERS, "bogus"]),
        role=st.sampled_from(list(Role)),
        data=st.data(),
    )
    def fire_anything(self, case_id: int, trigger: str, role: Role, data: st.DataObject) -> None:
        """Any trigger by any role, sometimes on someone else's case."""
        actor = ACTORS[role]
        if data.draw(st.integers(0, 4)) == 0:
            actor = {Role.BUYER: OTHER_BUYER, Role.MERCHANT: OTHER_MERCHANT}.get(role, actor)
        self._fire(case_id, trigger, actor, data)

    def _fire(self, case_id: int, trigger: str, actor: Actor, data: st.DataObject) -> None:
        """Fire with valid data and a reason most of the time, junk sometimes."""
        if data.draw(st.integers(0, 9)) > 0:
            payload = data.draw(st.sampled_from(DATA_VARIANTS.get(trigger, [data_for(trigger)])))
        else:
            payload = data.draw(st.sampled_from(JUNK_DATA))
        reason = REASON if data.draw(st.integers(0, 9)) > 0 else None
        db = self.factory.db
        before_version, before_log = db.cases[case_id].version, len(db.log[case_id])
        try:
            result = self.service.fire(case_id, trigger, actor, data=payload, reason=reason)
        except (NotAllowed, InvalidInput, PolicyRefusal, Forbidden):
            # then: a refusal writes nothing
            assert self.factory.db.cases[case_id].version == before_version
            assert len(self.factory.db.log[case_id]) == before_log
            return
        assert result.records and result.records[0].trigger == trigger
        assert result.case.version == before_version + len(result.records)

    @rule(
        minutes=st.one_of(
            st.integers(1, 120), st.integers(120, 3 * 24 * 60), st.integers(1, 21 * 24 * 60)
        )
    )
    def time_passes(self, minutes: int) -> None:
        self.clock.advance(timedelta(minutes=minutes))
        self.service.run_due_timers()
        # every due deadline was dealt with
        now = self.clock.now()
        overdue = [
            t
            for t in self.factory.db.timers.values()
            if t.status is TimerStatus.PENDING and t.due_at <= now
        ]
        assert overdue == []

    @rule(case_id=cases, hours=st.integers(1, 200))
    def admin_extends(self, case_id: int, hours: int) -> None:
        try:
            self.service.extend_deadline(case_id, ADMIN, "holiday", hours=hours)
        except InvalidInput:
            assert self.service.get(case_id).deadline is None

    # -- invariants ---------------------------------------------------------------------------

    @invariant()
    def storage_is_consistent(self) -> None:
        db = self.factory.db
        live: dict[int, list[Any]] = defaultdict(list)
        for timer in db.timers.values():
            if timer.status in LIVE:
                live[timer.case_id].append(timer)
        claimed: dict[str, int] = defaultdict(int)
        paid: dict[str, set[int]] = defaultdict(set)
        for case_id, case in db.cases.items():
            # the state belongs to the type's machine; the log replays to it
            assert case.state in states_for(case.type)
            _check_log(case, db.log[case_id])
            # money: never negative, never more than the order paid
            assert 0 <= case.refund_amount <= case.payment.amount
            paid[case.order_id].add(case.payment.amount)
            if case.state not in NOT_REFUNDING:
                claimed[case.order_id] += case.refund_amount
            # timers: at most one, for the current state and version, the one the state arms
            timers = live.get(case_id, [])
            assert len(timers) <= 1, timers
            for timer in timers:
                assert timer.state is case.state and timer.version == case.version, timer
            if case.is_terminal:
                assert timers == []
            assert [t.kind for t in timers] == [k for k in [_expected_timer(case)] if k], case
            # the snapshot is the order of record's
            order = db.orders[case.order_id]
            assert case.payment == order.payment and case.merchant_id == order.merchant_id
            assert all(order.line(i.sku).unit_price == i.unit_price for i in case.items)  # type: ignore[union-attr]
        for order_id, amount in claimed.items():
            (order_paid,) = paid[order_id]  # the cases of an order agree on its payment
            assert amount <= order_paid, (order_id, amount)
        self._check_order_caps(db)

    def _check_order_caps(self, db: Any) -> None:
        """Per line, units under open cases plus units refunded never exceed those ordered,
        and the fen refunded never exceed the line's total; per order, refunds and open
        claims never exceed what was paid. Counted here from the cases, apart from
        ``orders.account``, and compared with it."""
        for order_id, order in db.orders.items():
            cases = [case for case in db.cases.values() if case.order_id == order_id]
            held: dict[str, int] = defaultdict(int)
            refunded_units: dict[str, int] = defaultdict(int)
            refunded_fen: dict[str, int] = defaultdict(int)
            for case in cases:
                if case.state in NOT_REFUNDING:
                    continue
                received = case.details.get("received")
                left = case.refund_amount
                for line_item in case.items:
                    if not case.is_terminal:
                        held[line_item.sku] += line_item.quantity
                        continue
                    units = line_item.quantity
                    if received is not None and case.type is not CaseType.REFUND_ONLY:
                        units = received.get(line_item.sku, 0)
                    refunded_units[line_item.sku] += units
                    share = min(left, units * line_item.unit_price)
                    refunded_fen[line_item.sku] += share
                    left -= share
                # a refund pays for no unit that did not come back
                assert left == 0 or not case.is_terminal, case
            accounted = account(order, cases)
            for line in order.lines:
                assert held[line.sku] + refunded_units[line.sku] <= line.quantity, (order, cases)
                assert refunded_fen[line.sku] <= line.total, (order, cases)
                mine = accounted.line(line.sku)
                assert mine is not None
                assert (mine.open_quantity, mine.refunded_quantity, mine.refunded_amount) == (
                    held[line.sku],
                    refunded_units[line.sku],
                    refunded_fen[line.sku],
                )
            assert accounted.refunded + accounted.pending <= order.payment.amount


CaseWorkflow.TestCase.settings = settings(
    max_examples=50,
    stateful_step_count=30,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
test_case_workflow = CaseWorkflow.TestCase
