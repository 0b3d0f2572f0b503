"""One test (or a small group) per rule of RULES.md; each name and docstring names its rule.

Times are given as Shanghai wall-clock (the platform's zone); the fake clock starts on
2026-11-20 10:00 Shanghai and is moved by hand.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from config.policy import Policy, load_policy
from workflow import service as service_module
from workflow.clock import FakeClock
from workflow.errors import Forbidden, InvalidInput, NotAllowed, NotFound, PolicyRefusal
from workflow.memory import InMemoryDatabase, InMemoryUnitOfWorkFactory
from workflow.model import RefundRoute
from workflow.ports import CaseQuery
from workflow.service import CaseService
from workflow.states import TERMINAL_STATES, CaseState, CaseType

from .builders import (
    ADMIN,
    BUYER,
    CARRIER,
    GIFT_VALUE,
    ITEM_PRICE,
    MERCHANT,
    OTHER_BUYER,
    PAYMENT,
    REASON,
    SYSTEM,
    application,
    data_for,
    import_orders,
    item,
    open_units,
    order_for,
    payment,
    shanghai,
    submit_in,
    submit_with_order,
)

MINUTE = timedelta(minutes=1)
NewCase = Callable[..., int]
MakeApp = Callable[..., dict[str, Any]]


def _topics(db: InMemoryDatabase, case_id: int, topic: str) -> list[dict[str, Any]]:
    return [m.payload for m in db.outbox if m.case_id == case_id and m.topic == topic]


def _triggers(service: CaseService, case_id: int) -> list[str]:
    return [record.trigger for record in service.history(case_id)]


def _due(service: CaseService, case_id: int) -> datetime:
    deadline = service.get(case_id).deadline
    assert deadline is not None
    return deadline.due_at


def _snapshot(db: InMemoryDatabase) -> InMemoryDatabase:
    return copy.deepcopy(db)


def _assert_nothing_written(db: InMemoryDatabase, before: InMemoryDatabase) -> None:
    assert db.cases == before.cases
    assert db.log == before.log
    assert db.timers == before.timers
    assert db.outbox == before.outbox
    assert db.orders == before.orders


def _check_timer(
    service: CaseService,
    clock: FakeClock,
    case_id: int,
    kind: str,
    delay: timedelta,
    trigger: str,
    then: CaseState,
) -> None:
    """The case has just armed ``kind``: nothing at due-1min, ``trigger`` fires at due time."""
    view = service.get(case_id)
    assert view.deadline is not None
    assert view.deadline.kind == kind
    assert view.deadline.due_at == clock.now() + delay
    # when: one minute before the due time
    clock.advance(delay - MINUTE)
    assert service.run_due_timers() == []
    assert service.get(case_id).case.state is view.case.state
    assert service.get(case_id).case.version == view.case.version
    # when: the due time comes
    clock.advance(MINUTE)
    runs = service.run_due_timers()
    # then: the timer's trigger fired as the system, and the case moved on
    assert [(run.timer.kind, run.fired) for run in runs] == [(kind, True)]
    fired = [r for r in service.history(case_id) if r.trigger == trigger]
    assert fired and fired[-1].actor == "system" and fired[-1].at == clock.now()
    assert service.get(case_id).case.state is then


# == A.1 the five steps of a return ===============================================================


def test_A1_five_step_return_flow(service: CaseService, make_app: MakeApp, db: InMemoryDatabase):
    """A.1: select the item, submit, merchant review -> pickup info, buyer ships with a tracking
    number, merchant confirms receipt and refunds."""
    # given/when steps 1-2: the buyer selects the item of the order and submits
    view = submit_with_order(service, make_app("return_refund", items=[item("A", ITEM_PRICE)]))
    case_id = view.case.id
    assert case_id is not None
    assert view.case.state is CaseState.SUBMITTED and view.case.skus == ["A"]
    # step 3: the merchant approves; a courier pickup is requested and booked
    assert service.fire(case_id, "approve", MERCHANT).case.state is CaseState.APPROVED
    assert _topics(db, case_id, "pickup.requested")
    booked = service.fire(case_id, "book_pickup", SYSTEM, data=data_for("book_pickup"))
    assert booked.case.state is CaseState.PICKUP
    assert booked.case.details["pickup"]["pickup_code"] == "PK-1"
    # step 4: the buyer ships the goods back with the tracking number
    shipped = service.fire(case_id, "ship_back", BUYER, data={"tracking_no": "SF42"})
    assert shipped.case.state is CaseState.SHIPPED_BACK
    assert shipped.case.details["return_tracking_no"] == "SF42"
    # step 5: the merchant confirms receipt and the refund is processed
    assert service.fire(case_id, "confirm_receipt", MERCHANT).case.state is CaseState.RECEIVED
    refunding = service.fire(case_id, "inspect", MERCHANT, data={})
    assert refunding.case.state is CaseState.REFUNDING
    # nothing missing: the full paid price goes back
    assert [r["amount"] for r in _topics(db, case_id, "refund.requested")] == [ITEM_PRICE]
    done = service.fire(case_id, "confirm_refund", PAYMENT, data={"reference": "wx-1"})
    # then: refunded, no deadline left, every step in the log
    assert done.case.state is CaseState.REFUNDED and done.deadline is None
    assert _triggers(service, case_id) == [
        "submit",
        "approve",
        "book_pickup",
        "ship_back",
        "confirm_receipt",
        "inspect",
        "start_refund",
        "confirm_refund",
    ]


def test_A1_exchange_flow_sends_a_replacement_instead_of_money(
    service: CaseService, new_case: NewCase, db: InMemoryDatabase
):
    """A.1 step 5 (exchange): after receipt the merchant ships a replacement; no refund."""
    # given: an exchange whose goods the merchant inspected
    case_id = new_case("exchange", "inspected")
    # when: the replacement ships, is delivered and the buyer confirms
    service.fire(case_id, "ship_replacement", MERCHANT, data={"tracking_no": "SF77"})
    service.fire(case_id, "record_buyer_delivery", CARRIER, data={})
    done = service.fire(case_id, "confirm_delivery", BUYER)
    # then: exchanged, the outbound tracking number kept, no money moved
    assert done.case.state is CaseState.EXCHANGED
    assert done.case.details["outbound_tracking_no"] == "SF77"
    assert _topics(db, case_id, "refund.requested") == []


# == A.2 / A.7 warranty ==========================================================================

# (category, months, delivered day) -> the last day of the warranty is 2026-11-20 for each
_WARRANTIES = [
    ("phone", 12, (2025, 11, 20)),
    ("electronics", 12, (2025, 11, 20)),
    ("clothing", 3, (2026, 8, 20)),
    ("food", 3, (2026, 8, 20)),
]


def _warranty_app(case_type: str, category: str, delivered: datetime) -> dict[str, Any]:
    return application(
        case_type,
        now=delivered,
        category=category,
        reason="quality_issue",
        delivered_at=delivered,
        payment=payment(paid_at=delivered - timedelta(days=2)),
    )


@pytest.mark.parametrize(("category", "months", "delivered"), _WARRANTIES)
def test_A2_A7_warranty_last_day_is_still_covered(
    service: CaseService,
    clock: FakeClock,
    category: str,
    months: int,
    delivered: tuple[int, int, int],
):
    """A.2/A.7 warranty: electronics 12 months, clothing/food 3 months, from the day of receipt;
    a repair of a quality problem on the last day of the warranty is accepted."""
    # given: goods received at 15:00 on the delivered day; now: 23:59 on the last warranty day
    clock.set(shanghai(2026, 11, 20, 23, 59))
    app = _warranty_app("repair", category, shanghai(*delivered, 15, 0))
    # when
    view = submit_with_order(service, app)
    # then
    assert view.case.state is CaseState.SUBMITTED
    assert view.case.category == category


@pytest.mark.parametrize(("category", "months", "delivered"), _WARRANTIES)
def test_A2_A7_warranty_day_after_the_last_day_is_refused(
    service: CaseService,
    clock: FakeClock,
    db: InMemoryDatabase,
    category: str,
    months: int,
    delivered: tuple[int, int, int],
):
    """A.2/A.7 warranty: a repair on the day after the warranty's last day is refused by rule
    warranty_period, naming the period's dates and the day of the application."""
    # given: the first minute of the day after the last warranty day
    clock.set(shanghai(2026, 11, 21, 0, 0))
    app = _warranty_app("repair", category, shanghai(*delivered, 15, 0))
    # when
    with pytest.raises(PolicyRefusal) as refused:
        submit_with_order(service, app)
    # then
    assert refused.value.rule == "warranty_period"
    message = str(refused.value)
    first = f"{delivered[0]:04d}-{delivered[1]:02d}-{delivered[2]:02d}"
    assert first in message and "2026-11-20" in message and "2026-11-21" in message
    assert db.cases == {}


def test_A2_warranty_counts_from_the_day_of_receipt_in_shanghai(
    service: CaseService, clock: FakeClock
):
    """A.2 warranty from the day received: 2025-11-20 17:00 UTC is already 2025-11-21 in
    Shanghai, so the 12-month warranty still covers 2026-11-21."""
    # given: delivered late evening UTC, i.e. the next day in Shanghai; now: one year on
    # when/then: still covered
    clock.set(shanghai(2026, 11, 21, 12, 0))
    app = _warranty_app("repair", "electronics", datetime(2025, 11, 20, 17, 0, tzinfo=UTC))
    assert submit_with_order(service, app).case.state is CaseState.SUBMITTED


def test_A2_warranty_months_end_on_the_last_day_of_a_shorter_month(
    service: CaseService, clock: FakeClock
):
    """A.2 warranty, 3 months from 30 November end on 28 February (no 30 February)."""
    delivered = shanghai(2026, 11, 30, 10, 0)
    # given/when: 28 Feb 2027 is covered
    clock.set(shanghai(2027, 2, 28, 18, 0))
    assert submit_with_order(service, _warranty_app("repair", "clothing", delivered)).case.id
    # when: 1 March is not
    clock.set(shanghai(2027, 3, 1, 0, 0))
    with pytest.raises(PolicyRefusal) as refused:
        submit_with_order(
            service, _warranty_app("repair", "clothing", delivered) | {"order_id": "o2"}
        )
    assert refused.value.rule == "warranty_period"
    assert "2027-02-28" in str(refused.value)


def test_A2_repair_needs_a_category_with_warranty(service: CaseService, make_app: MakeApp):
    """A.2: only categories with a warranty are repaired (general goods have none)."""
    # given/when: a repair for general goods; then: no warranty to repair under
    with pytest.raises(PolicyRefusal) as refused:
        submit_with_order(service, make_app("repair", category="general"))
    assert refused.value.rule == "warranty_period"


def test_A2_repair_is_for_quality_problems_only(service: CaseService, make_app: MakeApp):
    """A.2/A.5: warranty repair covers quality problems, not a change of mind."""
    # given/when: a repair without a defect; then: refused
    with pytest.raises(PolicyRefusal) as refused:
        submit_with_order(service, make_app("repair", reason="no_reason"))
    assert refused.value.rule == "repair_needs_quality_issue"


def test_A7_C_a_quality_problem_is_repaired_after_the_exchange_window_within_warranty(
    service: CaseService, clock: FakeClock
):
    """A.7/C: within the warranty the buyer may apply freely for a repair of a quality problem,
    long after the no-reason window; an exchange (15 days), a refund (7 days) or a no-reason
    return are refused then, each naming its own rule."""
    delivered = shanghai(2026, 9, 1, 10, 0)
    # when/then: quality problem almost three months later: a repair is accepted
    assert submit_with_order(service, _warranty_app("repair", "electronics", delivered)).case.id
    # when/then: the same goods for exchange, refund or without a reason: refused
    expected = [
        ("exchange", "quality_issue", "quality_exchange_window"),
        ("return_refund", "quality_issue", "quality_refund_window"),
        ("return_refund", "no_reason", "no_reason_window"),
    ]
    for n, (case_type, reason, rule) in enumerate(expected):
        app = _warranty_app(case_type, "electronics", delivered) | {"order_id": f"o{n + 2}"}
        with pytest.raises(PolicyRefusal) as refused:
            submit_with_order(service, app | {"reason": reason})
        assert refused.value.rule == rule


# == C quality problems (三包): refund 7 days, exchange 15 days, then repair ======================

_QUALITY_REASONS = ["quality_issue", "not_as_described"]


def _quality_app(
    case_type: str, reason: str, delivered: datetime, **overrides: Any
) -> dict[str, Any]:
    facts = {
        "category": "electronics",
        "reason": reason,
        "delivered_at": delivered,
        "payment": payment(paid_at=delivered - timedelta(days=2)),
    }
    return application(case_type, now=delivered, **(facts | overrides))


@pytest.mark.parametrize("reason", _QUALITY_REASONS)
@pytest.mark.parametrize(
    ("case_type", "last_day", "rule"),
    [
        ("return_refund", 17, "quality_refund_window"),
        ("exchange", 25, "quality_exchange_window"),
    ],
)
def test_C_quality_windows_last_day_in_first_day_out(
    service: CaseService,
    clock: FakeClock,
    db: InMemoryDatabase,
    reason: str,
    case_type: str,
    last_day: int,
    rule: str,
):
    """C: a quality problem is refunded within 7 days of delivery and exchanged within 15,
    counted from the day after delivery: delivered 10 Nov 15:00, day 7 is 17 Nov, day 15 is
    25 Nov. The first minute after is refused by the window's rule, naming its dates and the
    day of the application."""
    delivered = shanghai(2026, 11, 10, 15, 0)
    # given/when: the last minute of the last day: accepted
    clock.set(shanghai(2026, 11, last_day, 23, 59))
    assert (
        submit_with_order(service, _quality_app(case_type, reason, delivered)).case.state
        is CaseState.SUBMITTED
    )
    # when: the first minute of the next day
    clock.set(shanghai(2026, 11, last_day + 1, 0, 0))
    with pytest.raises(PolicyRefusal) as refused:
        submit_with_order(service, _quality_app(case_type, reason, delivered, order_id="o2"))
    # then: refused by the window, naming the dates compared; only the first case stored
    assert refused.value.rule == rule
    message = str(refused.value)
    assert "2026-11-11" in message and f"2026-11-{last_day}" in message
    assert f"applied on 2026-11-{last_day + 1}" in message
    assert len(db.cases) == 1


def test_C_a_refused_quality_refund_points_to_the_exchange_then_to_the_repair(
    service: CaseService, clock: FakeClock
):
    """C: the refusal says what is still open: an exchange until day 15, then a repair until
    the end of the warranty."""
    delivered = shanghai(2026, 11, 10, 15, 0)
    # when: a refund on day 8; then: an exchange is still open until 25 Nov
    clock.set(shanghai(2026, 11, 18, 9, 0))
    with pytest.raises(PolicyRefusal) as refused:
        submit_with_order(service, _quality_app("return_refund", "quality_issue", delivered))
    assert "apply for exchange (open until 2026-11-25)" in str(refused.value)
    # when: a refund on day 16; then: a repair is open until the warranty's end
    clock.set(shanghai(2026, 11, 26, 9, 0))
    with pytest.raises(PolicyRefusal) as refused:
        submit_with_order(service, _quality_app("return_refund", "quality_issue", delivered))
    assert "apply for repair (open until 2027-11-10)" in str(refused.value)
    # when: an exchange on day 16; then: the same repair hint
    with pytest.raises(PolicyRefusal) as refused:
        submit_with_order(service, _quality_app("exchange", "quality_issue", delivered))
    assert "apply for repair (open until 2027-11-10)" in str(refused.value)


def test_C_quality_windows_count_days_in_shanghai_time(service: CaseService, clock: FakeClock):
    """C, counted in Asia/Shanghai: delivered 10 Nov 17:30 UTC is 11 Nov 01:30 in Shanghai, so
    the refund window's day 7 is 18 Nov (a UTC count would end on 17 Nov)."""
    delivered = datetime(2026, 11, 10, 17, 30, tzinfo=UTC)
    # given/when: 18 Nov 23:59 Shanghai (15:59 UTC): accepted
    clock.set(shanghai(2026, 11, 18, 23, 59))
    assert submit_with_order(
        service, _quality_app("return_refund", "quality_issue", delivered)
    ).case.id
    # when: 19 Nov 00:00 Shanghai (still 18 Nov in UTC): refused
    clock.set(shanghai(2026, 11, 19, 0, 0))
    with pytest.raises(PolicyRefusal) as refused:
        submit_with_order(
            service, _quality_app("return_refund", "quality_issue", delivered, order_id="o2")
        )
    assert refused.value.rule == "quality_refund_window"
    assert "2026-11-12" in str(refused.value) and "2026-11-18" in str(refused.value)


def test_C_a_repair_may_be_asked_for_inside_the_refund_window_too(
    service: CaseService, clock: FakeClock
):
    """C: the buyer may choose a free repair at any time within the warranty."""
    # given/when: a repair on the day after delivery; then: accepted
    delivered = clock.now() - timedelta(days=1)
    assert submit_with_order(service, _quality_app("repair", "quality_issue", delivered)).case.id


def test_C_a_category_without_warranty_has_the_quality_windows_and_no_repair(
    service: CaseService, clock: FakeClock
):
    """C: general goods carry no warranty: refund 7 days, exchange 15, then nothing."""
    delivered = shanghai(2026, 11, 1, 12, 0)
    app = _quality_app("exchange", "quality_issue", delivered, category="general")
    # given/when: day 15 (16 Nov): exchange accepted
    clock.set(shanghai(2026, 11, 16, 20, 0))
    assert submit_with_order(service, app).case.id
    # when: day 16: refused, with no repair to point to
    clock.set(shanghai(2026, 11, 17, 0, 0))
    with pytest.raises(PolicyRefusal) as refused:
        submit_with_order(service, app | {"order_id": "o2"})
    assert refused.value.rule == "quality_exchange_window"
    assert "apply for" not in str(refused.value)


def test_C_quality_windows_are_configurable_per_category(tmp_path: Path, clock: FakeClock):
    """C: the windows come from config (quality_refund_days, quality_exchange_days), and a
    category may have its own ([quality_by_category.CATEGORY])."""
    override = tmp_path / "policy.toml"
    override.write_text(
        "quality_exchange_days = 10\n[quality_by_category.electronics]\nrefund_days = 3\n",
        encoding="utf-8",
    )
    policy = load_policy(override)
    service = CaseService(InMemoryUnitOfWorkFactory(), clock, policy)
    delivered = shanghai(2026, 11, 10, 15, 0)
    # then: electronics refund 3 days (last day 13 Nov), other categories keep 7
    assert policy.quality_refund_days_for("electronics") == 3
    assert policy.quality_refund_days_for("clothing") == 7
    assert policy.quality_exchange_days_for("electronics") == 10
    clock.set(shanghai(2026, 11, 14, 0, 0))
    with pytest.raises(PolicyRefusal) as refused:
        submit_with_order(service, _quality_app("return_refund", "quality_issue", delivered))
    assert refused.value.rule == "quality_refund_window" and "2026-11-13" in str(refused.value)
    clothing = _quality_app(
        "return_refund", "quality_issue", delivered, category="clothing", order_id="o2"
    )
    assert submit_with_order(service, clothing).case.id
    # and the exchange window of 10 days ends on 20 Nov
    clock.set(shanghai(2026, 11, 21, 0, 0))
    with pytest.raises(PolicyRefusal) as refused:
        submit_with_order(
            service, _quality_app("exchange", "quality_issue", delivered, order_id="o3")
        )
    assert refused.value.rule == "quality_exchange_window" and "2026-11-20" in str(refused.value)


@pytest.mark.parametrize("reason", ["wrong_item", "damaged_in_transit", "missing_item"])
def test_A6_delivery_problems_are_returned_within_the_no_reason_window(
    service: CaseService, clock: FakeClock, reason: str
):
    """A.6/B: wrong, damaged or missing goods are returned or exchanged within the 7-day
    window (not the 15-day quality exchange window)."""
    delivered = shanghai(2026, 11, 10, 15, 0)
    clock.set(shanghai(2026, 11, 17, 23, 59))
    assert submit_with_order(service, _quality_app("exchange", reason, delivered)).case.id
    clock.set(shanghai(2026, 11, 18, 0, 0))
    with pytest.raises(PolicyRefusal) as refused:
        submit_with_order(service, _quality_app("exchange", reason, delivered, order_id="o2"))
    assert refused.value.rule == "no_reason_window"


# == A.3 / B gifts ==============================================================================


def test_A3_B_missing_gift_reduces_the_refund_by_its_declared_value(
    service: CaseService, new_case: NewCase, db: InMemoryDatabase
):
    """A.3/B gifts: a gift recorded missing at inspection takes its declared value off the
    refund, and does not block the return."""
    # given: a return with gift G (declared 500 fen) back at the merchant
    case_id = new_case("return_refund", "received")
    # when: the inspection records G missing
    result = service.fire(case_id, "inspect", MERCHANT, data={"gifts_missing": ["G"]})
    # then: the refund still starts, less the gift's value
    assert result.case.state is CaseState.REFUNDING
    assert result.case.gift_deduction == GIFT_VALUE
    assert result.case.refund_amount == ITEM_PRICE - GIFT_VALUE
    assert [m["amount"] for m in _topics(db, case_id, "refund.requested")] == [
        ITEM_PRICE - GIFT_VALUE
    ]


def test_A3_B_only_the_missing_gifts_count_each_at_most_its_declared_value(
    service: CaseService, new_case: NewCase
):
    """B gifts: two gifts declared, one missing: only that one, times its quantity, is
    deducted; a gift that came back costs nothing."""
    # given: two gift lines, G1 x2 at 300 and G2 at 4 000; when: only G1 is missing
    gifts = [
        {"sku": "G1", "quantity": 2, "value": 300},
        {"sku": "G2", "quantity": 1, "value": 4000},
    ]
    case_id = new_case("return_refund", "received", gifts=gifts)
    result = service.fire(case_id, "inspect", MERCHANT, data={"gifts_missing": ["G1"]})
    assert result.case.gift_deduction == 600
    assert result.case.refund_amount == ITEM_PRICE - 600


def test_A3_B_gift_deduction_never_makes_the_refund_negative(
    service: CaseService, new_case: NewCase
):
    """B gifts: the refund is reduced by *at most* the gift's value: never below zero."""
    # given: a partial refund of 200 fen; when: the 500-fen gift is missing; then: 0, not -300
    case_id = new_case("return_refund", "received", requested_amount=200)
    result = service.fire(case_id, "inspect", MERCHANT, data={"gifts_missing": ["G"]})
    assert result.case.refund_amount == 0


def test_A3_B_no_gift_recorded_missing_keeps_the_full_refund(
    service: CaseService, new_case: NewCase
):
    """B gifts: the gift came back (or inspection was deemed passed): no deduction."""
    # given: goods back with the gift; when: inspected with nothing missing; then: full refund
    case_id = new_case("return_refund", "received")
    result = service.fire(case_id, "inspect", MERCHANT, data={"gifts_missing": []})
    assert result.case.refund_amount == ITEM_PRICE


def test_A3_B_a_gift_not_on_the_application_cannot_be_recorded_missing(
    service: CaseService, new_case: NewCase
):
    """B gifts: only gifts listed on the application (with their value) can be deducted."""
    # given: goods back; when: an unknown gift is recorded missing; then: invalid, unchanged
    case_id = new_case("return_refund", "received")
    version = service.get(case_id).case.version
    with pytest.raises(InvalidInput) as invalid:
        service.fire(case_id, "inspect", MERCHANT, data={"gifts_missing": ["NOT-A-GIFT"]})
    assert invalid.value.field == "data.gifts_missing"
    assert service.get(case_id).case.version == version


# == A.4 / B refund channel =====================================================================


def test_A4_refund_goes_back_to_the_original_channel(
    service: CaseService, new_case: NewCase, db: InMemoryDatabase
):
    """A.4: refunds go back the way they were paid (WeChat Pay refunds to WeChat)."""
    # given: a refund-only case paid by WeChat 5 days ago; when: approved
    # then: refunding to the original channel, the request names WeChat Pay
    case_id = new_case("refund_only")
    result = service.fire(case_id, "approve", MERCHANT)
    assert result.case.state is CaseState.REFUNDING
    assert result.case.refund_route is RefundRoute.ORIGINAL_CHANNEL
    (request,) = _topics(db, case_id, "refund.requested")
    assert request["channel"] == "wechat_pay"
    assert request["route"] == RefundRoute.ORIGINAL_CHANNEL.value


@pytest.mark.parametrize(
    ("paid_before_now", "expected"),
    [
        (timedelta(days=365), CaseState.REFUNDING),
        (timedelta(days=365, minutes=1), CaseState.AWAITING_BANK_ACCOUNT),
    ],
    ids=["day-365", "past-365-days"],
)
def test_B_wechat_refund_window_is_365_days_after_payment(
    service: CaseService, clock: FakeClock, paid_before_now: timedelta, expected: CaseState
):
    """B refund channel windows: WeChat Pay refunds are possible up to 365 days after
    payment; past that the case waits for a bank account."""
    # given: electronics paid a year ago, delivered the day after, back at the merchant
    paid_at = clock.now() - paid_before_now
    case_id = submit_in(
        service,
        "return_refund",
        "received",
        category="electronics",
        reason="quality_issue",
        payment=payment(paid_at=paid_at),
        # a pre-order delivered only now: the quality refund window counts from delivery
        delivered_at=clock.now() - timedelta(days=2),
    )
    # when: the merchant inspects now
    result = service.fire(case_id, "inspect", MERCHANT, data={})
    # then
    assert [r.trigger for r in result.records] == ["inspect", "start_refund"]
    assert result.case.state is expected


def test_A4_B_past_the_channel_window_the_refund_goes_by_bank_transfer(
    service: CaseService, clock: FakeClock, db: InMemoryDatabase
):
    """A.4/B: past the channel's window the buyer supplies bank details and the refund is made
    by bank transfer (awaiting_bank_account -> provide_bank_account -> refunding)."""
    paid_at = clock.now() - timedelta(days=400)
    case_id = submit_in(
        service,
        "return_refund",
        "received",
        category="electronics",
        reason="quality_issue",
        payment=payment(paid_at=paid_at),
        delivered_at=clock.now() - timedelta(days=2),
    )
    # when: the inspection passes
    waiting = service.fire(case_id, "inspect", MERCHANT, data={})
    # then: the buyer is asked for an account; the reminder deadline is armed
    assert waiting.case.state is CaseState.AWAITING_BANK_ACCOUNT
    assert waiting.case.refund_route is RefundRoute.BANK_TRANSFER
    assert [m["kind"] for m in _topics(db, case_id, "bank_account.requested")] == ["request"]
    assert waiting.deadline is not None and waiting.deadline.kind == "bank_account_reminder"
    # when: the buyer provides the account
    account = data_for("provide_bank_account")
    assert account is not None
    paid = service.fire(case_id, "provide_bank_account", BUYER, data=account)
    # then: the refund goes out by bank transfer; the log masks the account number
    assert paid.case.state is CaseState.REFUNDING
    assert paid.case.refund_route is RefundRoute.BANK_TRANSFER
    (request,) = _topics(db, case_id, "refund.requested")
    assert request["route"] == RefundRoute.BANK_TRANSFER.value
    logged = service.history(case_id)[-1].data["account_no"]
    assert logged.endswith(account["account_no"][-4:]) and account["account_no"] not in logged


def test_A4_a_channel_without_a_refund_window_refunds_by_bank_transfer(
    service: CaseService, new_case: NewCase
):
    """A.4/B: a channel the policy lists no refund window for cannot refund the original way."""
    # given: paid cash on delivery; when: approved; then: the buyer is asked for an account
    case_id = new_case("refund_only", payment=payment(channel="cash_on_delivery"))
    result = service.fire(case_id, "approve", MERCHANT)
    assert result.case.state is CaseState.AWAITING_BANK_ACCOUNT


# == A.5 quality problems within warranty =======================================================


def test_A5_quality_problem_within_warranty_is_repaired_free(
    service: CaseService, clock: FakeClock, db: InMemoryDatabase
):
    """A.5: within warranty the merchant inspects the goods on receipt and repairs them; the
    buyer gets them back and the case ends repaired, with no money moved."""
    # given: a phone delivered five months ago, failing now
    case_id = submit_in(
        service,
        "repair",
        "received",
        category="phone",
        delivered_at=clock.now() - timedelta(days=150),
        payment=payment(paid_at=clock.now() - timedelta(days=152)),
    )
    # when: inspected, repaired and shipped back, delivered, confirmed
    assert service.fire(case_id, "inspect", MERCHANT, data={}).case.state is CaseState.INSPECTED
    service.fire(case_id, "ship_repaired", MERCHANT, data={"tracking_no": "SF9"})
    service.fire(case_id, "record_buyer_delivery", CARRIER, data={})
    done = service.fire(case_id, "confirm_delivery", BUYER)
    # then
    assert done.case.state is CaseState.REPAIRED
    assert _topics(db, case_id, "refund.requested") == []
    assert open_units(db, "o1") == {}


def test_A5_a_failed_inspection_rejects_the_case_with_a_reason(
    service: CaseService, new_case: NewCase
):
    """A.5: the inspection result decides; a failed inspection needs the merchant's reason and
    sends the case to rejected (the buyer may then escalate)."""
    # given: the goods are back; when: the inspection fails without / with a reason
    # then: a reason is required; the case is rejected and the buyer may escalate
    case_id = new_case("repair", "received")
    with pytest.raises(InvalidInput) as invalid:
        service.fire(case_id, "fail_inspection", MERCHANT)
    assert invalid.value.field == "reason"
    result = service.fire(case_id, "fail_inspection", MERCHANT, reason="water damage")
    assert result.case.state is CaseState.REJECTED
    assert result.records[-1].reason == "water damage"
    assert "escalate" in service.allowed_triggers(case_id, BUYER)


# == A.6 logistics problems =====================================================================


@pytest.mark.parametrize("report", ["report_parcel_lost", "report_parcel_damaged"])
def test_A6_carrier_reports_the_return_parcel_lost_or_damaged_case_disputed(
    service: CaseService, new_case: NewCase, db: InMemoryDatabase, report: str
):
    """A.6: the carrier answers for the parcel in transit; its report puts the case before the
    platform, and a ruling for the buyer refunds (the goods left the buyer's hands)."""
    case_id = new_case("return_refund", "shipped_back")
    # when: the carrier reports the incident
    disputed = service.fire(case_id, report, CARRIER, data=data_for(report))
    # then: disputed, the platform notified
    assert disputed.case.state is CaseState.DISPUTED
    assert [m["trigger"] for m in _topics(db, case_id, "dispute.opened")] == [report]
    assert disputed.case.details["parcel_incident"] == report.removeprefix("report_parcel_")
    # when: the platform rules for the buyer
    ruled = service.fire(case_id, "rule_for_buyer", ADMIN, reason="carrier liable")
    assert [r.trigger for r in ruled.records] == ["rule_for_buyer", "start_refund"]
    assert ruled.case.state is CaseState.REFUNDING


def test_A6_a_lost_replacement_is_disputed_and_a_ruling_lets_the_merchant_resend(
    service: CaseService, new_case: NewCase
):
    """A.6: the replacement lost on its way to the buyer: disputed; ruling for the buyer
    resumes after inspection so the merchant can send another one."""
    # given: a replacement on its way; when: lost, then ruled for the buyer
    # then: back to inspected, where the merchant ships again
    case_id = new_case("exchange", "shipped_to_buyer")
    service.fire(case_id, "report_parcel_lost", CARRIER, data={})
    ruled = service.fire(case_id, "rule_for_buyer", ADMIN, reason="resend")
    assert ruled.case.state is CaseState.INSPECTED
    assert "ship_replacement" in service.allowed_triggers(case_id, MERCHANT)


def test_A6_goods_damaged_on_arrival_refund_only_without_a_return(
    service: CaseService, make_app: MakeApp, db: InMemoryDatabase
):
    """A.6/B refund-only: goods arrived damaged: a refund without sending anything back."""
    # given: a refund-only application for goods damaged in transit; when: approved
    # then: the refund starts and no pickup is requested
    view = submit_with_order(service, make_app("refund_only", reason="damaged_in_transit"))
    case_id = view.case.id
    assert case_id is not None
    result = service.fire(case_id, "approve", MERCHANT)
    assert result.case.state is CaseState.REFUNDING
    assert _topics(db, case_id, "pickup.requested") == []


def test_A6_damage_must_be_reported_within_the_7_day_window(
    service: CaseService, clock: FakeClock, make_app: MakeApp
):
    """A.6/B: damaged or missing on delivery is reported within the 7-day window."""
    # given: delivered 10 Nov; when: reported on 18 Nov (day 8); then: refused
    app = make_app("refund_only", reason="missing_item", delivered_at=shanghai(2026, 11, 10, 9, 0))
    clock.set(shanghai(2026, 11, 18, 0, 0))
    with pytest.raises(PolicyRefusal) as refused:
        submit_with_order(service, app)
    assert refused.value.rule == "no_reason_window"


def test_A6_C_refund_only_on_delivered_goods_last_day_in_first_day_out_in_shanghai(
    service: CaseService, clock: FakeClock, make_app: MakeApp
):
    """A.6/C: damage or a missing item is reported for a refund only within the 7-day
    window, in Shanghai days: delivered 10 Nov 17:30 UTC is 11 Nov in Shanghai, so day 7 is
    18 Nov."""
    delivered = datetime(2026, 11, 10, 17, 30, tzinfo=UTC)
    app = make_app("refund_only", reason="missing_item", delivered_at=delivered)
    # given/when: 18 Nov 23:59 Shanghai: accepted, waiting for the merchant's consent
    clock.set(shanghai(2026, 11, 18, 23, 59))
    view = submit_with_order(service, app)
    assert view.deadline is not None and view.deadline.kind == "merchant_consent"
    # when: 19 Nov 00:00 Shanghai: refused, naming the dates
    clock.set(shanghai(2026, 11, 19, 0, 0))
    with pytest.raises(PolicyRefusal) as refused:
        submit_with_order(service, app | {"order_id": "o2"})
    assert refused.value.rule == "no_reason_window"
    assert "2026-11-18" in str(refused.value) and "2026-11-19" in str(refused.value)


def test_A6_B_not_received_is_refund_only(service: CaseService, make_app: MakeApp):
    """B refund-only (not received): goods never delivered are refunded without a return;
    a return-type case needs the goods delivered first."""
    # given/when/then: undelivered goods: refund-only accepted, a return refused,
    # and refund-only without reason for delivered goods refused
    assert submit_with_order(
        service, make_app("refund_only", reason="not_received", delivered_at=None)
    ).case.id
    with pytest.raises(PolicyRefusal) as refused:
        submit_with_order(service, make_app("return_refund", delivered_at=None, order_id="o2"))
    assert refused.value.rule == "delivery_required"
    with pytest.raises(PolicyRefusal) as refused:
        submit_with_order(service, make_app("refund_only", reason="no_reason", order_id="o3"))
    assert refused.value.rule == "reason_fits_type"


# == A.8 customer service: every case traceable ================================================


def test_A8_every_case_is_traceable_step_by_step(
    service: CaseService, clock: FakeClock, new_case: NewCase
):
    """A.8: customer service (admin), the merchant and the buyer trace every case: who did
    what, when, and why."""
    case_id = new_case("return_refund")
    clock.advance(timedelta(hours=1))
    service.fire(case_id, "reject", MERCHANT, reason="photos missing")
    clock.advance(timedelta(hours=1))
    service.fire(case_id, "escalate", BUYER)
    # then: the log holds each step in order, with actor, time and reason
    log = service.history(case_id, ADMIN)
    assert [(r.seq, r.trigger, r.actor) for r in log] == [
        (1, "submit", "buyer:b1"),
        (2, "reject", "merchant:m1"),
        (3, "escalate", "buyer:b1"),
    ]
    assert [r.at for r in log] == sorted(r.at for r in log)
    assert log[1].reason == "photos missing"
    assert service.history(case_id, BUYER) == service.history(case_id, MERCHANT) == log
    # and each party finds its cases, no one else's
    assert [v.case.id for v in service.list(CaseQuery(), MERCHANT)] == [case_id]
    assert service.list(CaseQuery(), OTHER_BUYER) == []


# == B timers ===================================================================================

_DEFAULT_HOURS = {
    "merchant_review": 48,
    "merchant_consent": 48,
    "return_shipment": 7 * 24,
    "merchant_receipt": 10 * 24,
    "merchant_inspection": 48,
    "replacement_shipment": 48,
    "buyer_confirmation": 10 * 24,
    "dispute_window": 7 * 24,
    "bank_account_reminder": 7 * 24,
}


@pytest.mark.parametrize(("kind", "hours"), sorted(_DEFAULT_HOURS.items()))
@pytest.mark.parametrize("case_type", list(CaseType))
def test_B_timer_defaults_match_the_rules(
    policy: Policy, kind: str, hours: int, case_type: CaseType
):
    """B timers table: the default of every timer, for every case type."""
    # given: the default policy; then: each timer's delay is the RULES.md value
    assert policy.timer(kind, case_type.value) == timedelta(hours=hours)


def test_B_timer_merchant_review_48h_auto_approves(
    service: CaseService, clock: FakeClock, new_case: NewCase
):
    """B: merchant review of an application: 48 h, then auto-approve."""
    # given: a new application; when/then: see _check_timer
    case_id = new_case("return_refund")
    _check_timer(
        service,
        clock,
        case_id,
        "merchant_review",
        timedelta(hours=48),
        "auto_approve",
        CaseState.APPROVED,
    )


def test_B_C_timer_merchant_review_48h_auto_approves_refund_only_for_goods_not_received(
    service: CaseService, clock: FakeClock, new_case: NewCase
):
    """B/C: a refund-only case for goods not received is auto-approved and starts its refund
    at once."""
    # given: a refund-only application, the goods never delivered; when/then: see _check_timer
    case_id = new_case("refund_only", reason="not_received", delivered_at=None)
    _check_timer(
        service,
        clock,
        case_id,
        "merchant_review",
        timedelta(hours=48),
        "start_refund",
        CaseState.REFUNDING,
    )
    assert _triggers(service, case_id) == ["submit", "auto_approve", "start_refund"]


@pytest.mark.parametrize("reason", ["quality_issue", "damaged_in_transit", "missing_item"])
def test_C_refund_only_on_delivered_goods_is_never_auto_approved_but_escalated(
    service: CaseService, clock: FakeClock, new_case: NewCase, db: InMemoryDatabase, reason: str
):
    """C refund-only: delivered goods are refunded without return only with the merchant's
    consent. The merchant's silence is no consent: at the 48 h deadline the case goes before
    the platform (escalate -> disputed), nothing is refunded (issue 13: ¥3,999 refunded for a
    quality_issue with nothing sent back)."""
    # given: a refund-only application on goods delivered 2 days ago; when/then: _check_timer
    case_id = new_case("refund_only", reason=reason)
    _check_timer(
        service,
        clock,
        case_id,
        "merchant_consent",
        timedelta(hours=48),
        "escalate",
        CaseState.DISPUTED,
    )
    # then: no refund requested; the platform is notified
    assert _topics(db, case_id, "refund.requested") == []
    assert [m["trigger"] for m in _topics(db, case_id, "dispute.opened")] == ["escalate"]
    assert "auto_approve" not in _triggers(service, case_id)


def test_C_the_merchants_approval_or_the_platforms_ruling_is_the_consent(
    service: CaseService, clock: FakeClock, new_case: NewCase
):
    """C refund-only on delivered goods: the merchant's approval (even after its deadline,
    before the sweep) or, once escalated, the platform's ruling for the buyer refunds."""
    # given: two delivered refund-only cases, the consent deadline passed but not swept
    approved, ruled = new_case("refund_only"), new_case("refund_only", order_id="o2")
    clock.advance(timedelta(hours=49))
    # when: the merchant approves the first; then: refunding
    assert service.fire(approved, "approve", MERCHANT).case.state is CaseState.REFUNDING
    # when: the sweep escalates the second and the platform rules for the buyer
    service.run_due_timers()
    assert service.get(ruled).case.state is CaseState.DISPUTED
    result = service.fire(ruled, "rule_for_buyer", ADMIN, reason="photos show the damage")
    # then: refunding
    assert [r.trigger for r in result.records] == ["rule_for_buyer", "start_refund"]
    assert result.case.state is CaseState.REFUNDING


def test_C_an_auto_approval_of_a_consent_case_goes_to_the_platform_not_the_refund(
    service: CaseService, new_case: NewCase, db: InMemoryDatabase
):
    """C: even if an auto-approval fires on a refund-only case that needs the merchant's
    consent (a timer armed by an older release), it is routed to the platform."""
    # given: a delivered refund-only case; when: the system fires auto_approve
    case_id = new_case("refund_only", reason="quality_issue")
    result = service.fire(case_id, "auto_approve", SYSTEM)
    # then: disputed, no refund requested
    assert result.case.state is CaseState.DISPUTED
    assert _topics(db, case_id, "refund.requested") == []


def test_C_an_older_delivered_refund_only_is_routed_to_the_platform_by_its_timer(
    service: CaseService, clock: FakeClock, new_case: NewCase, db: InMemoryDatabase
):
    """C: a delivered refund-only case submitted before the consent rule (no flag recorded,
    the review timer armed) is not refunded when that timer fires: it goes to the platform."""
    # given: a delivered refund-only case as an older release stored it
    case_id = new_case("refund_only", reason="quality_issue")
    del db.cases[case_id].details["merchant_consent_required"]
    # when: the review timer of the older release fires auto_approve
    result = service.fire(case_id, "auto_approve", SYSTEM)
    # then: disputed, no refund; a not-received one of the same age is still approved
    assert result.case.state is CaseState.DISPUTED
    assert _topics(db, case_id, "refund.requested") == []
    other = new_case("refund_only", reason="not_received", delivered_at=None, order_id="o2")
    del db.cases[other].details["merchant_consent_required"]
    assert service.fire(other, "auto_approve", SYSTEM).case.state is CaseState.REFUNDING


def test_C_a_revised_refund_only_still_needs_the_consent(
    service: CaseService, clock: FakeClock, new_case: NewCase
):
    """C: a rejected refund-only application revised by the buyer waits for the merchant's
    consent again, not for an auto-approval."""
    # given: a delivered refund-only case rejected, then revised
    case_id = new_case("refund_only")
    service.fire(case_id, "reject", MERCHANT, reason="no photos")
    revised = service.fire(case_id, "revise", BUYER, data={"description": "photos attached"})
    # then: the consent deadline is armed again
    assert revised.deadline is not None and revised.deadline.kind == "merchant_consent"


def test_C_an_order_not_shipped_is_refunded_at_once(
    service: CaseService, make_app: MakeApp, db: InMemoryDatabase, monkeypatch: pytest.MonkeyPatch
):
    """C refund-only: an order the merchant has not shipped is refunded at once, with no
    review to wait for; a shipped order not received waits for the review (next test)."""
    # given: the order's facts say it was never shipped (the order of record does not record
    # shipment yet, hence the patched facts)
    build = service_module._eligibility_facts
    monkeypatch.setattr(
        service_module,
        "_eligibility_facts",
        lambda app, order, line: replace(build(app, order, line), shipped=False),
    )
    # when: the buyer applies for a refund only
    view = submit_with_order(
        service, make_app("refund_only", reason="no_reason", delivered_at=None)
    )
    # then: the refund is under way in the same transaction, no deadline armed
    case_id = view.case.id
    assert case_id is not None
    assert view.case.state is CaseState.REFUNDING and view.deadline is None
    assert _triggers(service, case_id) == ["submit", "auto_approve", "start_refund"]
    assert [r.actor for r in service.history(case_id)][1:] == ["system", "system"]
    assert len(_topics(db, case_id, "refund.requested")) == 1
    assert [t for t in db.timers.values() if t.case_id == case_id] == []


def test_C_refund_only_for_undelivered_goods_needs_no_consent(
    service: CaseService, new_case: NewCase
):
    """C: goods not received (not shipped, or lost in transit) need no consent: the ordinary
    review deadline (auto-approve) is armed."""
    # given/when: a refund-only for goods never delivered
    case_id = new_case("refund_only", reason="not_received", delivered_at=None)
    # then
    view = service.get(case_id)
    assert view.deadline is not None and view.deadline.kind == "merchant_review"
    assert view.case.details["merchant_consent_required"] is False


@pytest.mark.parametrize("label", ["approved", "pickup"])
def test_B_timer_return_shipment_7d_closes_the_case(
    service: CaseService, clock: FakeClock, new_case: NewCase, label: str
):
    """B: buyer to ship the return after approval: 7 days, then the case is closed."""
    # given: an approved return (pickup booked or not); when/then: see _check_timer
    case_id = new_case("return_refund", label)
    _check_timer(
        service,
        clock,
        case_id,
        "return_shipment",
        timedelta(days=7),
        "expire_return",
        CaseState.CLOSED,
    )


def test_B_timer_merchant_receipt_10d_auto_receives_and_proceeds_to_the_refund(
    service: CaseService, clock: FakeClock, new_case: NewCase, db: InMemoryDatabase
):
    """B: merchant to confirm receipt after delivery of the return: 10 days, then
    auto-receive and proceed to the refund at once: no second 48 h inspection wait."""
    # given: the return parcel delivered; when/then: see _check_timer
    case_id = new_case("return_refund", "return_delivered")
    _check_timer(
        service,
        clock,
        case_id,
        "merchant_receipt",
        timedelta(days=10),
        "start_refund",
        CaseState.REFUNDING,
    )
    # then: received and the inspection deemed passed in the same step; the refund requested
    assert _triggers(service, case_id)[-2:] == ["auto_receive", "start_refund"]
    details = service.get(case_id).case.details
    assert details["goods_back"] is True
    assert details["inspection"] == {"deemed_passed_at": clock.now().isoformat()}
    (request,) = _topics(db, case_id, "refund.requested")
    assert request["amount"] == ITEM_PRICE


@pytest.mark.parametrize(
    ("case_type", "next_kind"),
    [("exchange", "replacement_shipment"), ("repair", "repair_completion")],
)
def test_B_timer_merchant_receipt_10d_deems_an_exchange_or_repair_inspected(
    service: CaseService, clock: FakeClock, new_case: NewCase, case_type: str, next_kind: str
):
    """B: after the receipt timeout an exchange or repair skips the inspection wait too: the
    goods are deemed received and inspected, and the replacement or repair deadline runs."""
    # given: the return parcel delivered; when/then: see _check_timer
    case_id = new_case(case_type, "return_delivered")
    _check_timer(
        service,
        clock,
        case_id,
        "merchant_receipt",
        timedelta(days=10),
        "auto_receive",
        CaseState.INSPECTED,
    )
    view = service.get(case_id)
    assert view.deadline is not None and view.deadline.kind == next_kind
    assert "deemed_passed_at" in view.case.details["inspection"]


@pytest.mark.parametrize(
    ("case_type", "then"),
    [
        ("return_refund", CaseState.REFUNDING),
        ("exchange", CaseState.INSPECTED),
        ("repair", CaseState.INSPECTED),
    ],
)
def test_B_timer_merchant_inspection_48h_deems_inspection_passed(
    service: CaseService, clock: FakeClock, new_case: NewCase, case_type: str, then: CaseState
):
    """B: merchant inspection after receipt: 48 h, then the inspection is deemed passed."""
    # given: goods received by the merchant; when/then: see _check_timer
    case_id = new_case(case_type, "received")
    _check_timer(
        service, clock, case_id, "merchant_inspection", timedelta(hours=48), "deem_inspected", then
    )
    assert "deemed_passed_at" in service.get(case_id).case.details["inspection"]


def test_B_timer_replacement_shipment_48h_converts_to_refund(
    service: CaseService, clock: FakeClock, new_case: NewCase
):
    """B: merchant to ship an exchange replacement: 48 h, then converted to a refund."""
    # given: an inspected exchange; when/then: see _check_timer
    case_id = new_case("exchange", "inspected")
    _check_timer(
        service,
        clock,
        case_id,
        "replacement_shipment",
        timedelta(hours=48),
        "convert_to_refund",
        CaseState.REFUNDING,
    )


@pytest.mark.parametrize(
    ("case_type", "then"), [("exchange", CaseState.EXCHANGED), ("repair", CaseState.REPAIRED)]
)
def test_B_timer_buyer_confirmation_10d_auto_confirms(
    service: CaseService, clock: FakeClock, new_case: NewCase, case_type: str, then: CaseState
):
    """B: buyer to confirm a replacement or repaired item after delivery: 10 days, then
    auto-confirmed and the case completed."""
    # given: the replacement / repaired goods delivered; when/then: see _check_timer
    case_id = new_case(case_type, "delivered_to_buyer")
    _check_timer(
        service,
        clock,
        case_id,
        "buyer_confirmation",
        timedelta(days=10),
        "auto_confirm_delivery",
        then,
    )


def test_B_timer_dispute_window_7d_closes_a_rejected_case(
    service: CaseService, clock: FakeClock, new_case: NewCase
):
    """B: buyer to ask the platform to intervene after a rejection: 7 days, then closed."""
    # given: a rejected case; when/then: see _check_timer
    case_id = new_case("return_refund", "rejected")
    _check_timer(
        service,
        clock,
        case_id,
        "dispute_window",
        timedelta(days=7),
        "expire_dispute_window",
        CaseState.CLOSED,
    )


def test_B_timer_bank_account_7d_reminds_then_escalates_to_an_admin(
    service: CaseService, clock: FakeClock, new_case: NewCase, db: InMemoryDatabase
):
    """B: buyer to supply bank details: 7 days, then a reminder, then escalated to an admin."""
    # given: waiting for the buyer's bank account; when/then: see _check_timer
    case_id = new_case("return_refund", "awaiting_bank_account")
    _check_timer(
        service,
        clock,
        case_id,
        "bank_account_reminder",
        timedelta(days=7),
        "remind_bank_account",
        CaseState.AWAITING_BANK_ACCOUNT,
    )
    assert [m["kind"] for m in _topics(db, case_id, "bank_account.requested")] == [
        "request",
        "reminder",
    ]
    _check_timer(
        service,
        clock,
        case_id,
        "bank_account_escalation",
        timedelta(days=7),
        "escalate",
        CaseState.DISPUTED,
    )


@pytest.mark.parametrize(
    ("case_type", "label", "kind"),
    [
        ("return_refund", "shipped_back", "return_transit"),
        ("exchange", "shipped_to_buyer", "outbound_transit"),
        ("repair", "inspected", "repair_completion"),
    ],
)
def test_B_platform_timers_15d_escalate_stalled_cases(
    service: CaseService, clock: FakeClock, new_case: NewCase, case_type: str, label: str, kind: str
):
    """B (platform convention, policy.toml): a parcel never delivered or a repair never done
    escalates to the platform after 15 days instead of waiting unseen."""
    # given: a parcel in transit / a repair under way; when/then: see _check_timer
    case_id = new_case(case_type, label)
    _check_timer(service, clock, case_id, kind, timedelta(days=15), "escalate", CaseState.DISPUTED)


def test_B_refund_retry_backs_off_then_parks_the_case_for_an_admin(
    service: CaseService, clock: FakeClock, new_case: NewCase, db: InMemoryDatabase
):
    """B refunds execute once: a failed refund is retried after 5, 10, 20, 40 minutes; after
    the 5th failed attempt it stays in refund_failed for an admin."""
    case_id = new_case("refund_only", "refund_failed")
    for minutes in (5, 10, 20, 40):
        _check_timer(
            service,
            clock,
            case_id,
            "refund_retry",
            timedelta(minutes=minutes),
            "retry_refund",
            CaseState.REFUNDING,
        )
        service.fire(case_id, "fail_refund", PAYMENT, data={"error": "still down"})
    # then: five attempts failed: parked, no further deadline, an admin is told
    view = service.get(case_id)
    assert view.case.state is CaseState.REFUND_FAILED and view.case.refund_attempts == 5
    assert view.deadline is None
    assert [m["attempts"] for m in _topics(db, case_id, "refund.parked")] == [5]
    assert "retry_refund" in service.allowed_triggers(case_id, ADMIN)


def test_B_timer_values_are_configurable_per_case_type(tmp_path: Path, clock: FakeClock):
    """B: every value is a default operators change in config, per case type."""
    override = tmp_path / "policy.toml"
    override.write_text("[timer_overrides.repair]\nmerchant_review = { hours = 72 }\n")
    policy = load_policy(override)
    service = CaseService(InMemoryUnitOfWorkFactory(), clock, policy)
    # when: a repair and a return are submitted under the override
    repair = submit_in(service, "repair")
    other = submit_in(service, "return_refund", order_id="o2")
    # then: only the repair waits 72 h
    assert _due(service, repair) == clock.now() + timedelta(hours=72)
    assert _due(service, other) == clock.now() + timedelta(hours=48)


# == B admin deadline extension ================================================================


def test_B_admin_extends_a_deadline_with_a_reason(
    service: CaseService, clock: FakeClock, new_case: NewCase
):
    """B timers: platforms move deadlines (holidays): an admin extends one, with a reason; the
    timer fires at the new time only, and the extension is logged."""
    case_id = new_case("return_refund")
    original = service.get(case_id).deadline
    assert original is not None
    # when: extended by 24 h for a holiday
    result = service.extend_deadline(case_id, ADMIN, "national holiday", hours=24)
    # then
    assert result.deadline is not None
    assert result.deadline.due_at == original.due_at + timedelta(hours=24)
    record = service.history(case_id)[-1]
    assert (record.trigger, record.reason, record.actor) == (
        "extend_deadline",
        "national holiday",
        "admin:ops1",
    )
    assert record.from_state is record.to_state is CaseState.SUBMITTED
    assert record.data["to"] == result.deadline.due_at.isoformat()
    # and: it does not fire at the old time, nor one minute before the new one
    clock.set(original.due_at)
    assert service.run_due_timers() == []
    clock.set(result.deadline.due_at - MINUTE)
    assert service.run_due_timers() == []
    clock.advance(MINUTE)
    assert [run.fired for run in service.run_due_timers()] == [True]
    assert service.get(case_id).case.state is CaseState.APPROVED


def test_B_an_extended_return_deadline_survives_the_pickup_booking(
    service: CaseService, new_case: NewCase
):
    """B timers: approved -> pickup keeps the one return deadline, extension included."""
    # given: an approved return whose deadline an admin extended; when: pickup booked
    # then: the extended due time stays
    case_id = new_case("return_refund", "approved")
    extended = service.extend_deadline(case_id, ADMIN, "typhoon", hours=48).deadline
    assert extended is not None
    after = service.fire(case_id, "book_pickup", SYSTEM, data=data_for("book_pickup")).deadline
    assert after is not None and after.due_at == extended.due_at


@pytest.mark.parametrize("reason", [None, "", "   "])
def test_B_deadline_extension_without_a_reason_is_refused(
    service: CaseService, new_case: NewCase, reason: str | None
):
    """B: an admin extends a deadline *with a reason*; without one nothing changes."""
    # given: a case with a deadline; when: extended without a reason; then: refused, unchanged
    case_id = new_case("return_refund")
    before = service.get(case_id)
    with pytest.raises(InvalidInput) as invalid:
        service.extend_deadline(case_id, ADMIN, reason, hours=24)
    assert invalid.value.field == "reason"
    assert service.get(case_id) == before


@pytest.mark.parametrize("actor", [BUYER, MERCHANT, SYSTEM], ids=str)
def test_B_only_admins_extend_deadlines(service: CaseService, new_case: NewCase, actor):
    """B: deadline extensions are an admin's decision."""
    # given: a case with a deadline; when: a non-admin extends it; then: forbidden, unchanged
    case_id = new_case("return_refund")
    before = service.get(case_id)
    with pytest.raises(Forbidden):
        service.extend_deadline(case_id, actor, "please", hours=24)
    assert service.get(case_id) == before


def test_B_a_deadline_is_only_extended_to_a_later_time(
    service: CaseService, clock: FakeClock, new_case: NewCase
):
    """B: an extension moves the deadline later, never earlier."""
    # given: a deadline 48 h away; when: 'extended' to 1 h from now, or given two ways
    # then: invalid input
    case_id = new_case("return_refund")
    with pytest.raises(InvalidInput):
        service.extend_deadline(case_id, ADMIN, REASON, until=clock.now() + timedelta(hours=1))
    with pytest.raises(InvalidInput):
        service.extend_deadline(case_id, ADMIN, REASON, until=clock.now(), hours=1)


@pytest.mark.parametrize(
    "bad", [{"hours": 0}, {"hours": -5}, {"until": datetime(2026, 12, 1, 10, 0)}], ids=str
)
def test_B_malformed_deadline_extension_is_invalid_input(
    service: CaseService, new_case: NewCase, bad: dict[str, Any]
):
    """B: a malformed extension is refused as invalid input naming the field."""
    # given: a case with a deadline; when: a non-positive or naive extension; then: invalid
    case_id = new_case("return_refund")
    with pytest.raises(InvalidInput) as invalid:
        service.extend_deadline(case_id, ADMIN, REASON, **bad)
    assert invalid.value.field in ("hours", "until", "data.hours", "data.until")


# == B no-reason window =========================================================================


def test_A7_B_no_reason_window_counts_from_the_day_after_delivery(
    service: CaseService, clock: FakeClock, make_app: MakeApp
):
    """A.7/B no-reason window: 7 days from the day after delivery: delivered 18 Nov 15:00,
    day 1 is 19 Nov, day 7 (25 Nov) is the last day."""
    delivered = shanghai(2026, 11, 18, 15, 0)
    # given: the last minute of day 7
    clock.set(shanghai(2026, 11, 25, 23, 59))
    # when/then: accepted
    assert (
        submit_with_order(service, make_app(delivered_at=delivered)).case.state
        is CaseState.SUBMITTED
    )


def test_A7_B_no_reason_window_day_8_is_refused_naming_the_dates(
    service: CaseService, clock: FakeClock, make_app: MakeApp, db: InMemoryDatabase
):
    """A.7/B no-reason window: day 8 after delivery is refused by rule no_reason_window with
    the window's first and last day and the day of the application."""
    # given: delivered 18 Nov; when: applying at 00:00 on 26 Nov (day 8); then: refused
    delivered = shanghai(2026, 11, 18, 15, 0)
    clock.set(shanghai(2026, 11, 26, 0, 0))
    with pytest.raises(PolicyRefusal) as refused:
        submit_with_order(service, make_app(delivered_at=delivered))
    assert refused.value.rule == "no_reason_window"
    message = str(refused.value)
    assert "2026-11-19" in message and "2026-11-25" in message and "2026-11-26" in message
    assert db.cases == {}


def test_B_no_reason_window_counts_days_in_shanghai_time(
    service: CaseService, clock: FakeClock, make_app: MakeApp
):
    """B no-reason window, counted in Asia/Shanghai: delivered 18 Nov 17:30 UTC is 19 Nov
    01:30 in Shanghai, so day 7 is 26 Nov (a UTC count would end on 25 Nov)."""
    # given: delivered in the early hours of 19 Nov, Shanghai time
    # when/then: 26 Nov evening is accepted, 27 Nov refused
    delivered = datetime(2026, 11, 18, 17, 30, tzinfo=UTC)
    clock.set(shanghai(2026, 11, 26, 20, 0))
    assert submit_with_order(service, make_app(delivered_at=delivered)).case.id
    clock.set(shanghai(2026, 11, 27, 0, 1))
    with pytest.raises(PolicyRefusal) as refused:
        submit_with_order(service, make_app(delivered_at=delivered, order_id="o2"))
    assert refused.value.rule == "no_reason_window"


@pytest.mark.parametrize("category", ["custom_made", "fresh_food", "digital", "newspaper"])
def test_B_excluded_categories_have_no_no_reason_return(
    service: CaseService, make_app: MakeApp, db: InMemoryDatabase, category: str
):
    """B excluded categories: made-to-order, fresh, digital, newspapers: no no-reason return
    (even inside the 7 days), but a quality problem is still accepted."""
    # given: goods of an excluded category delivered 2 days ago
    # when/then: no reason: refused, nothing stored; a quality problem: accepted
    with pytest.raises(PolicyRefusal) as refused:
        submit_with_order(service, make_app("return_refund", category=category, reason="no_reason"))
    assert refused.value.rule == "no_reason_excluded_category"
    assert db.cases == {}
    view = submit_with_order(
        service, make_app("return_refund", category=category, reason="quality_issue")
    )
    assert view.case.state is CaseState.SUBMITTED


def test_C_an_unknown_category_is_refused_at_the_order_import(
    service: CaseService, make_app: MakeApp, db: InMemoryDatabase
):
    """C / issue 13: a category code the policy does not know is refused when the order is
    imported (no silent ``general``), naming the line; no order, so no application."""
    # given/when: an order whose line has an unknown category
    app = make_app(category="spaceships")
    result = import_orders(service, order_for(app))
    # then: refused naming the field, nothing stored, and the application finds no order
    assert [r.field for r in result.refused] == ["lines.0.category"]
    assert db.orders == {}
    with pytest.raises(NotFound):
        service.submit(app)


# == B one open case per order item =============================================================


def test_B_one_open_case_per_order_item(
    service: CaseService, make_app: MakeApp, db: InMemoryDatabase
):
    """B: one open case per order item: a second application is refused naming the open
    case; after the first is cancelled the item may be applied for again."""
    first = submit_with_order(service, make_app()).case.id
    before = _snapshot(db)
    # when: the same item again (even as another case type)
    with pytest.raises(PolicyRefusal) as refused:
        submit_with_order(service, make_app("exchange"))
    # then: refused, naming the item and the open case
    assert refused.value.rule == "one_open_case_per_item"
    assert f"line A: 1 ordered, 1 under open cases (case {first})" in str(refused.value)
    _assert_nothing_written(db, before)
    # when: the first case is cancelled
    assert first is not None
    service.fire(first, "cancel", BUYER)
    # then: the item is free again
    assert submit_with_order(service, make_app("exchange")).case.state is CaseState.SUBMITTED


def test_B_other_items_of_the_same_order_may_have_their_own_cases(
    service: CaseService, make_app: MakeApp
):
    """B: the rule is per item: another item of the order gets its own case."""
    # given: A of the order has an open case; when: B is applied for; then: accepted
    two = [item("A", 10_000), item("B", 9_900)]
    import_orders(service, order_for(make_app(items=two)))
    submit_with_order(service, make_app(items=[two[0]]))
    assert submit_with_order(service, make_app(items=[two[1]])).case.skus == ["B"]


def test_B_a_rejected_buyer_may_revise_and_re_apply(
    service: CaseService, clock: FakeClock, new_case: NewCase, make_app: MakeApp
):
    """B: a rejected buyer may revise and re-apply: the rejected case is still open (a new
    application is refused), the buyer revises it and it goes back to review."""
    case_id = new_case("return_refund", "rejected")
    with pytest.raises(PolicyRefusal) as refused:
        submit_with_order(service, make_app())
    assert refused.value.rule == "one_open_case_per_item"
    clock.advance(timedelta(hours=5))
    # when: the buyer revises
    result = service.fire(case_id, "revise", BUYER, data={"description": "photos attached"})
    # then: back in review with a fresh 48 h review deadline, the new description kept
    assert result.case.state is CaseState.SUBMITTED
    assert result.case.description == "photos attached"
    assert result.deadline is not None and result.deadline.kind == "merchant_review"
    assert result.deadline.due_at == clock.now() + timedelta(hours=48)
    assert service.fire(case_id, "approve", MERCHANT).case.state is CaseState.APPROVED


def test_B_after_a_rejection_closes_the_buyer_may_apply_anew(
    service: CaseService, clock: FakeClock, new_case: NewCase, make_app: MakeApp
):
    """B: once the rejected case closed (dispute window over), the item is free again."""
    # given: a rejected case; when: its dispute window runs out; then: a new application
    # (on the order as imported: 9 days after delivery only the quality exchange is open)
    app = make_app("exchange", reason="quality_issue")
    new_case("return_refund", "rejected")
    clock.advance(timedelta(days=7))
    assert [run.fired for run in service.run_due_timers()] == [True]
    assert submit_with_order(service, app).case.state is CaseState.SUBMITTED


# == B partial refunds and the order cap ========================================================


def test_B_partial_refund_of_the_requested_amount(
    service: CaseService, new_case: NewCase, db: InMemoryDatabase
):
    """B: partial refunds are allowed: the buyer asks for less than the items' price."""
    # given: 5 000 of 19 900 fen asked for; when: approved; then: 5 000 are refunded
    case_id = new_case("refund_only", requested_amount=5_000)
    assert service.get(case_id).case.refund_amount == 5_000
    service.fire(case_id, "approve", MERCHANT)
    assert [m["amount"] for m in _topics(db, case_id, "refund.requested")] == [5_000]


def test_B_a_partial_refund_cannot_exceed_the_items_price(service: CaseService, make_app: MakeApp):
    """B: the amount asked for is at most what the items were paid."""
    # given/when: asking 1 fen more than paid for the items; then: invalid
    with pytest.raises(InvalidInput) as invalid:
        submit_with_order(service, make_app(requested_amount=ITEM_PRICE + 1))
    assert invalid.value.field == "requested_amount"


def _coupon_order(
    service: CaseService, make_app: MakeApp, sku: str, **overrides: Any
) -> dict[str, Any]:
    """Order o1: items A, B, C at 15 000 fen each, paid 30 000 after an order coupon (the
    order of record is imported with its three lines)."""
    lines = [item(line, 15_000) for line in "ABC"]
    import_orders(service, order_for(make_app(items=lines, payment=payment(30_000))))
    return make_app(
        "return_refund",
        items=[item(sku, 15_000)],
        payment=payment(amount=30_000),
        **overrides,
    )


def test_B_order_refund_cap_refuses_a_third_case_once_the_payment_is_used_up(
    service: CaseService, make_app: MakeApp, db: InMemoryDatabase
):
    """B: the sum of refunds never exceeds the amount paid: two cases claim the whole payment,
    a third case of the order is refused by rule order_refund_cap."""
    # given: A and B claim 15 000 each of the 30 000 paid
    first = submit_with_order(service, _coupon_order(service, make_app, "A")).case
    second = submit_with_order(service, _coupon_order(service, make_app, "B")).case
    assert first.refund_amount + second.refund_amount == 30_000
    before = _snapshot(db)
    with pytest.raises(PolicyRefusal) as refused:
        submit_with_order(service, _coupon_order(service, make_app, "C"))
    assert refused.value.rule == "order_refund_cap"
    _assert_nothing_written(db, before)


def test_B_order_refund_cap_limits_a_case_to_what_the_order_has_left(
    service: CaseService, make_app: MakeApp
):
    """B: a case asks for at most what the order has left after the other cases."""
    # given: A claims 15 000 of the 20 000 paid; when: B (15 000) applies; then: 5 000 left
    both = [item("A", 15_000), item("B", 15_000)]
    import_orders(service, order_for(make_app(items=both, payment=payment(amount=20_000))))
    app_a = make_app(items=[item("A", 15_000)], payment=payment(amount=20_000))
    app_b = make_app(items=[item("B", 15_000)], payment=payment(amount=20_000))
    submit_with_order(service, app_a)
    assert submit_with_order(service, app_b).case.refund_amount == 5_000


def test_B_a_cancelled_case_gives_its_share_of_the_payment_back(
    service: CaseService, make_app: MakeApp
):
    """B order cap: only cases that may still refund count; a cancelled one does not."""
    # given: A and B used up the payment; when: A is cancelled; then: C gets 15 000
    first = submit_with_order(service, _coupon_order(service, make_app, "A")).case.id
    submit_with_order(service, _coupon_order(service, make_app, "B"))
    assert first is not None
    service.fire(first, "cancel", BUYER)
    assert (
        submit_with_order(service, _coupon_order(service, make_app, "C")).case.refund_amount
        == 15_000
    )


def test_B_order_refund_cap_holds_when_a_rejected_case_is_revised_upwards(
    service: CaseService, make_app: MakeApp
):
    """B: the sum of refunds never exceeds the amount paid, also after a revision."""
    # given: A asks 2 000 of its 15 000; B and C then claim the other 28 000 of the 30 000 paid
    first = submit_with_order(
        service, _coupon_order(service, make_app, "A", requested_amount=2_000)
    ).case.id
    submit_with_order(service, _coupon_order(service, make_app, "B"))
    assert (
        submit_with_order(service, _coupon_order(service, make_app, "C")).case.refund_amount
        == 13_000
    )
    assert first is not None
    service.fire(first, "reject", MERCHANT, reason="photos missing")
    # when: the buyer revises A up to its full price
    service.fire(first, "revise", BUYER, data={"requested_amount": 15_000})
    # then: the open claims of the order still fit in what was paid
    claims = [v.case.refund_amount for v in service.list(CaseQuery(order_id="o1"))]
    assert sum(claims) <= 30_000


# == B refunds execute once =====================================================================


def test_B_refund_key_is_persisted_with_the_transition_before_the_payment_call(
    service: CaseService, new_case: NewCase, db: InMemoryDatabase
):
    """B refunds execute once: the refund's idempotency key is stored with the transition
    into refunding, and the payment request (sent after commit) carries it."""
    case_id = new_case("refund_only")
    result = service.fire(case_id, "approve", MERCHANT)
    key = result.case.refund_key
    assert key
    # then: committed together: the stored case has the key and the outbox request uses it
    assert db.cases[case_id].refund_key == key
    assert [m["idempotency_key"] for m in _topics(db, case_id, "refund.requested")] == [key]


def test_B_refund_key_is_stable_and_a_repeated_payment_result_changes_nothing(
    service: CaseService, new_case: NewCase, db: InMemoryDatabase
):
    """B refunds execute once: the key does not change while the attempt runs; a payment
    result delivered twice (same idempotency key) refunds once."""
    # given: a refund under way; when: read twice, and its result delivered twice
    # then: one key, one confirmation, one payment request
    case_id = new_case("refund_only", "refunding")
    key = service.get(case_id).case.refund_key
    assert service.get(case_id).case.refund_key == key
    first = service.fire(case_id, "confirm_refund", PAYMENT, data={}, idempotency_key="pay-1")
    again = service.fire(case_id, "confirm_refund", PAYMENT, data={}, idempotency_key="pay-1")
    assert again.replayed and again.records == first.records
    assert _triggers(service, case_id).count("confirm_refund") == 1
    assert service.get(case_id).case.refund_key == key
    assert len(_topics(db, case_id, "refund.requested")) == 1


def test_B_a_retry_after_a_failed_refund_gets_a_new_attempt_key(
    service: CaseService, clock: FakeClock, new_case: NewCase, db: InMemoryDatabase
):
    """B refunds execute once: after a definite failure the next attempt is a new payment
    call with a new key; the failed attempt's key is never reused for different money."""
    # given: the first refund attempt failed; when: the retry timer fires after 5 min
    # then: attempt 2 is requested with its own key
    case_id = new_case("refund_only", "refund_failed")
    failed_key = service.get(case_id).case.refund_key
    clock.advance(timedelta(minutes=5))
    service.run_due_timers()
    retried = service.get(case_id).case
    assert retried.state is CaseState.REFUNDING and retried.refund_attempts == 2
    keys = [m["idempotency_key"] for m in _topics(db, case_id, "refund.requested")]
    assert keys == [failed_key, retried.refund_key]
    assert failed_key != retried.refund_key


def test_B_refund_re_entered_without_a_failure_reuses_its_key(
    service: CaseService, new_case: NewCase
):
    """B refunds execute once: a refund whose result is still unknown (the case was escalated
    while refunding) must keep its key when resumed, or the buyer could be paid twice."""
    # given: a refund under way, escalated before any result; when: resumed by a ruling
    case_id = new_case("refund_only", "refunding")
    key = service.get(case_id).case.refund_key
    service.fire(case_id, "escalate", ADMIN, reason="buyer says nothing arrived")
    resumed = service.fire(case_id, "rule_for_buyer", ADMIN, reason="continue the refund")
    assert resumed.case.state is CaseState.REFUNDING
    assert resumed.case.refund_key == key


# == B a refusal creates nothing ================================================================

#: scenario -> (set-up, application overrides, expected error, the rule or field it names)
_REFUSALS: dict[str, tuple[Callable[[CaseService], Any], dict[str, Any], type[Exception], str]] = {
    "window-passed": (
        lambda s: None,
        {"delivered_at": shanghai(2026, 11, 1, 9, 0)},
        PolicyRefusal,
        "no_reason_window",
    ),
    "excluded-category": (
        lambda s: None,
        {"category": "custom_made"},
        PolicyRefusal,
        "no_reason_excluded_category",
    ),
    "item-has-open-case": (
        lambda s: submit_in(s, "exchange"),
        {},
        PolicyRefusal,
        "one_open_case_per_item",
    ),
    "order-cap": (
        lambda s: submit_in(s, "exchange", items=[item("B", ITEM_PRICE)]),
        {"items": [item("C", 1)]},
        PolicyRefusal,
        "order_refund_cap",
    ),
    "malformed": (lambda s: None, {"items": []}, InvalidInput, "items"),
    "buyer-of-another": (lambda s: None, {"buyer_id": "b2"}, Forbidden, ""),
}


@pytest.mark.parametrize("scenario", list(_REFUSALS))
def test_B_a_refused_application_creates_nothing(
    service: CaseService, make_app: MakeApp, db: InMemoryDatabase, scenario: str
):
    """B: a refusal creates nothing: no case, no log row, no timer, no message."""
    # given: the scenario's earlier cases
    setup, overrides, error, named = _REFUSALS[scenario]
    app = make_app(**overrides)
    # the order of record: A, B at the item price and C at 1 fen, paid the item price
    lines = [item("A", ITEM_PRICE), item("B", ITEM_PRICE), item("C", 1)]
    import_orders(service, order_for({**app, "items": lines}))
    setup(service)
    before = _snapshot(db)
    # when: the application is refused
    with pytest.raises(error) as refused:
        service.submit(app, actor=BUYER)
    # then: for the reason expected, and nothing at all was stored
    assert (getattr(refused.value, "rule", None) or getattr(refused.value, "field", "")) == named
    _assert_nothing_written(db, before)
    assert db.next_case_id == before.next_case_id


def test_B_a_refused_transition_writes_nothing(
    service: CaseService, new_case: NewCase, db: InMemoryDatabase
):
    """B: a refused trigger leaves the case, its log, its deadline and the outbox as they were."""
    # given: goods back at the merchant; when: four refused attempts; then: nothing written
    case_id = new_case("return_refund", "received")
    before = _snapshot(db)
    for attempt in (
        lambda: service.fire(case_id, "approve", MERCHANT),
        lambda: service.fire(case_id, "inspect", MERCHANT, data={"gifts_missing": ["X"]}),
        lambda: service.fire(case_id, "fail_inspection", MERCHANT),
        lambda: service.fire(case_id, "force_close", ADMIN),
    ):
        with pytest.raises((NotAllowed, InvalidInput)):
            attempt()
    _assert_nothing_written(db, before)


# == B deadlines passed but not yet swept =======================================================


def test_B_shipping_after_the_return_window_passed_is_refused_naming_the_timer(
    service: CaseService, clock: FakeClock, new_case: NewCase, db: InMemoryDatabase
):
    """B timers: the buyer ships after the 7-day return deadline passed but before the timer
    fired: refused by the deadline (rule = timer kind), and the timer then closes the case."""
    # given: approved 7 days and 1 minute ago, the timer not swept yet; when: the buyer ships
    case_id = new_case("return_refund", "approved")
    clock.advance(timedelta(days=7, minutes=1))
    before = _snapshot(db)
    with pytest.raises(PolicyRefusal) as refused:
        service.fire(case_id, "ship_back", BUYER, data={"tracking_no": "SF-late"})
    assert refused.value.rule == "return_shipment"
    assert "expire_return" in str(refused.value)
    _assert_nothing_written(db, before)
    service.run_due_timers()
    assert service.get(case_id).case.state is CaseState.CLOSED


def test_B_a_late_action_leading_where_the_timeout_leads_is_allowed(
    service: CaseService, clock: FakeClock, new_case: NewCase
):
    """B timers: the merchant approves after the 48 h review deadline but before the sweep:
    it is what the timeout would do, so it goes through, and the stale timer does nothing."""
    # given: the review deadline passed an hour ago; when: the merchant approves
    case_id = new_case("return_refund")
    clock.advance(timedelta(hours=49))
    assert service.fire(case_id, "approve", MERCHANT).case.state is CaseState.APPROVED
    assert [run.fired for run in service.run_due_timers()] == []
    assert service.get(case_id).case.state is CaseState.APPROVED


def test_B_a_late_merchant_rejection_is_refused(
    service: CaseService, clock: FakeClock, new_case: NewCase
):
    """B timers: after the review deadline the merchant can no longer reject."""
    # given: the review deadline just passed; when: the merchant rejects; then: refused
    case_id = new_case("return_refund")
    clock.advance(timedelta(hours=48))
    with pytest.raises(PolicyRefusal) as refused:
        service.fire(case_id, "reject", MERCHANT, reason="too late")
    assert refused.value.rule == "merchant_review"


def test_B_the_buyer_may_cancel_while_an_overdue_review_awaits_the_sweep(
    service: CaseService, clock: FakeClock, new_case: NewCase
):
    """B timers: the merchant's missed review deadline does not take the buyer's right to
    withdraw (cancel is allowed from submitted and from approved alike)."""
    # given: the merchant let the review deadline pass; when: the buyer withdraws
    case_id = new_case("return_refund")
    clock.advance(timedelta(hours=48, minutes=1))
    assert service.fire(case_id, "cancel", BUYER).case.state is CaseState.CANCELLED


def test_B_bank_details_are_accepted_after_the_reminder_is_due(
    service: CaseService, clock: FakeClock, new_case: NewCase
):
    """B: 7 days without bank details only trigger a reminder: the buyer may still supply
    them (before and after the reminder goes out)."""
    # given: the reminder is due but not sent yet; when: the buyer provides the account
    case_id = new_case("refund_only", "awaiting_bank_account")
    clock.advance(timedelta(days=7, minutes=1))
    result = service.fire(
        case_id, "provide_bank_account", BUYER, data=data_for("provide_bank_account")
    )
    assert result.case.state is CaseState.REFUNDING


def test_B_bank_details_are_accepted_after_the_reminder_went_out(
    service: CaseService, clock: FakeClock, new_case: NewCase
):
    """B: after the reminder the buyer still supplies the account and the refund goes out."""
    # given: the reminder went out; when: the buyer provides the account; then: refunding
    case_id = new_case("refund_only", "awaiting_bank_account")
    clock.advance(timedelta(days=7))
    service.run_due_timers()
    result = service.fire(
        case_id, "provide_bank_account", BUYER, data=data_for("provide_bank_account")
    )
    assert result.case.state is CaseState.REFUNDING
    assert result.deadline is None


def test_B_terminal_cases_keep_no_deadline_and_free_their_items(
    service: CaseService, new_case: NewCase, db: InMemoryDatabase
):
    """B timers: a finished case has nothing left to wait for, and its items are free."""
    # given: a refunded and an exchanged case; then: no deadline, no item held
    for label, case_type in (("refunded", "refund_only"), ("exchanged", "exchange")):
        case_id = new_case(case_type, label, order_id=f"o-{label}")
        view = service.get(case_id)
        assert view.case.state in TERMINAL_STATES and view.deadline is None
        assert open_units(db, f"o-{label}") == {}
