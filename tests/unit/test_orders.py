"""Issue 13: orders of record, applications that name them, and per-line accounting.

The attacks of the issue's "Why" come first: each passed on the code before orders of record.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest

from config.policy import Policy
from workflow.errors import Forbidden, InvalidInput, NotFound, PolicyRefusal
from workflow.memory import InMemoryDatabase
from workflow.model import Actor
from workflow.orders import Order, account, merge_import, parse_order
from workflow.orders_service import OrderService
from workflow.service import CaseService
from workflow.states import CaseState, Role

from .builders import (
    ADMIN,
    BUYER,
    GIFT_VALUE,
    MERCHANT,
    NOW,
    OTHER_BUYER,
    OTHER_MERCHANT,
    PAYMENT,
    SYSTEM,
    application,
    data_for,
    drive,
    import_orders,
    item,
    order_for,
    payment,
)

S = CaseState
ONE_PHONE_PRICE = 19_900


def _order(**overrides: Any) -> dict[str, Any]:
    """Order o1 of b1 at m1: one jacket at ¥199, delivered two days ago, with a ¥5 gift."""
    return order_for(application(), **overrides)


def _refund_all(service: CaseService, case_id: int) -> None:
    """Approve, ship back, deliver, receive, inspect and pay a return (or approve and pay a
    refund-only case)."""
    case = service.get(case_id).case
    steps = [("approve", Role.MERCHANT)]
    if case.type.value != "refund_only":
        steps += [
            ("ship_back", Role.BUYER),
            ("record_return_delivery", Role.CARRIER),
            ("confirm_receipt", Role.MERCHANT),
            ("inspect", Role.MERCHANT),
        ]
    drive(service, case_id, steps)
    service.fire(case_id, "confirm_refund", PAYMENT, data=data_for("confirm_refund"))
    assert service.get(case_id).case.state is S.REFUNDED


# == the attacks of the issue =====================================================================


def test_an_order_paid_199_is_not_refunded_699_by_three_applications(
    service: CaseService, db: InMemoryDatabase
):
    """Issue 13: an order paid ¥199 was refunded ¥699 by three applications, each stating a
    different "paid" amount. The order of record says what was paid; a stated amount that
    disagrees is refused naming the field, and the order's refunds stay within ¥199."""
    # given: order o1 paid ¥199 for one jacket
    import_orders(service, _order())
    # when: the buyer states ¥250 and ¥250 paid on two further applications
    for amount in (25_000, 25_000):
        with pytest.raises(InvalidInput) as refused:
            service.submit(application(payment=payment(amount=amount)))
        assert refused.value.field == "payment.amount"
    # and applies once with the facts left out, then again for the same jacket
    first = service.submit(_bare_application()).case
    with pytest.raises(PolicyRefusal):
        service.submit(_bare_application(type="refund_only", reason="damaged_in_transit"))
    # then: one case, for at most what was paid
    assert [c.refund_amount for c in db.cases.values()] == [first.refund_amount]
    assert first.refund_amount <= ONE_PHONE_PRICE


def _bare_application(**overrides: Any) -> dict[str, Any]:
    """An application as issue 13 has it: the order, lines, quantities, reason, nothing else."""
    return {
        "type": "return_refund",
        "order_id": "o1",
        "buyer_id": "b1",
        "reason": "no_reason",
        "items": [{"sku": "A", "quantity": 1}],
        "description": "",
        **overrides,
    }


def test_an_invented_order_is_refused_and_queues_no_refund(
    service: CaseService, db: InMemoryDatabase
):
    """Issue 13: refund_only on an invented order stating 10^12 fen paid was auto-approved after
    the review deadline and a 10^12 fen refund queued. With no order of record: refused, with
    a clear message, and nothing written."""
    # when: the invented order is applied for
    invented = application(
        "refund_only",
        order_id="o-invented",
        reason="not_received",
        delivered_at=None,
        payment=payment(amount=10**12),
        items=[item("A", 10**12)],
    )
    with pytest.raises(NotFound) as refused:
        service.submit(invented)
    # then
    assert "no order of record o-invented" in str(refused.value)
    assert "aftersales orders import" in str(refused.value)
    assert db.cases == {} and db.outbox == []


def test_a_sku_refunded_once_cannot_be_refunded_again(service: CaseService, db: InMemoryDatabase):
    """Issue 13: after case A refunded SKU A, case B claimed SKU A again and was refunded."""
    # given: the jacket (one unit) was returned and refunded
    import_orders(service, _order())
    first = service.submit(application()).case.id
    assert first is not None
    _refund_all(service, first)
    # when: another case claims the same unit
    with pytest.raises(PolicyRefusal) as refused:
        service.submit(application("refund_only", reason="damaged_in_transit"))
    # then: refused, the line has nothing left
    assert refused.value.rule == "order_line_quantity"
    assert "1 ordered, 0 under open cases, 1 refunded; 0 left" in str(refused.value)
    assert len(db.cases) == 1


def test_quantity_50_is_refused_on_an_order_of_1(service: CaseService, db: InMemoryDatabase):
    """Issue 13: quantity 50 was accepted on an order of 1."""
    import_orders(service, _order())
    with pytest.raises(PolicyRefusal) as refused:
        service.submit(application(items=[item("A", ONE_PHONE_PRICE, quantity=50)]))
    assert refused.value.rule == "order_line_quantity"
    assert "1 left to apply for, not 50" in str(refused.value)
    assert db.cases == {}


def test_another_buyer_on_someones_order_learns_nothing(service: CaseService, db: InMemoryDatabase):
    """Issue 13: another buyer opened a case on someone's order, blocked the real buyer and
    learned the other case's id from the refusal. Now b2 naming b1's order gets exactly the
    answer b2 gets for an order that does not exist, and the real buyer is not blocked."""
    # given: b1's order with an open case
    import_orders(service, _order())
    mine = service.submit(application()).case.id
    # when: b2 applies on it, and on an order that does not exist
    with pytest.raises(NotFound) as on_someones:
        service.submit(application(buyer_id="b2"), OTHER_BUYER)
    with pytest.raises(NotFound) as on_none:
        service.submit(application(buyer_id="b2", order_id="o-none"), OTHER_BUYER)
    # then: the same answer but for the order id it was given, and no case id in it
    assert str(on_someones.value) == str(on_none.value).replace("o-none", "o1")
    assert f"case {mine}" not in str(on_someones.value)
    # and an admin submitting for b2 gets the same
    with pytest.raises(NotFound):
        service.submit(application(buyer_id="b2"), ADMIN)
    assert list(db.cases) == [mine]


# == applications name the order ==================================================================


@pytest.mark.parametrize(
    ("stated", "field"),
    [
        ({"merchant_id": "m2"}, "merchant_id"),
        ({"category": "electronics"}, "category"),
        ({"payment": payment(channel="alipay")}, "payment.channel"),
        ({"payment": payment(paid_at=NOW - timedelta(days=1))}, "payment.paid_at"),
        ({"delivered_at": NOW - timedelta(days=1)}, "delivered_at"),
        ({"delivered_at": None}, "delivered_at"),
        ({"gifts": [{"sku": "G", "quantity": 1, "value": GIFT_VALUE + 1}]}, "gifts.0.value"),
        ({"gifts": [{"sku": "other", "quantity": 1, "value": 0}]}, "gifts.0.sku"),
        ({"items": [item("A", ONE_PHONE_PRICE - 1)]}, "items.0.unit_price"),
        ({"items": [item("Z", ONE_PHONE_PRICE)]}, "items.0.sku"),
    ],
)
def test_a_stated_fact_that_disagrees_with_the_order_is_refused_naming_the_field(
    service: CaseService, db: InMemoryDatabase, stated: dict[str, Any], field: str
):
    import_orders(service, _order())
    with pytest.raises(InvalidInput) as refused:
        service.submit(application(**stated))
    assert refused.value.field == field
    assert db.cases == {}


def test_facts_that_agree_are_accepted_and_the_case_copies_the_order(service: CaseService):
    """The snapshot is the order of record's, whether the application states it or not."""
    import_orders(service, _order())
    stated = service.submit(application()).case
    service.fire(stated.id or 0, "cancel", BUYER)
    bare = service.submit(_bare_application()).case
    for case in (stated, bare):
        assert (case.merchant_id, case.category, case.payment.amount) == ("m1", "clothing", 19_900)
        assert [(i.sku, i.quantity, i.unit_price) for i in case.items] == [("A", 1, 19_900)]
        assert [(g.sku, g.value) for g in case.gifts] == [("G", GIFT_VALUE)]
        assert case.delivered_at == NOW - timedelta(days=2)


def test_items_of_two_categories_are_applied_for_apart(service: CaseService):
    lines = [
        {**item("A", 100), "category": "clothing"},
        {**item("P", 100), "category": "phone"},
    ]
    import_orders(service, _order(lines=lines))
    with pytest.raises(InvalidInput) as refused:
        service.submit(_bare_application(items=[item("A", 100), item("P", 100)]))
    assert refused.value.field == "items"
    assert "clothing, phone" in str(refused.value)


def test_eligibility_follows_the_order_of_record_not_the_application(service: CaseService):
    """The window runs from the order's delivery, whatever delivery date a buyer would state:
    a no-reason return ten days after delivery is refused."""
    import_orders(service, _order(delivered_at=NOW - timedelta(days=10)))
    with pytest.raises(PolicyRefusal) as refused:
        service.submit(_bare_application())
    assert refused.value.rule == "no_reason_window"


# == per-unit accounting ==========================================================================


def test_a_case_for_1_of_3_units_leaves_2_claimable(service: CaseService, db: InMemoryDatabase):
    import_orders(service, _order(lines=[{**item("A", 100, 3), "category": "clothing"}]))
    one = service.submit(_bare_application()).case.id
    two = service.submit(_bare_application(items=[{"sku": "A", "quantity": 2}])).case.id
    with pytest.raises(PolicyRefusal) as refused:
        service.submit(_bare_application())
    assert refused.value.rule == "one_open_case_per_item"
    assert f"(case {one}, case {two})" in str(refused.value)
    # when: the first is cancelled, its unit is free again
    service.fire(one or 0, "cancel", BUYER)
    assert service.submit(_bare_application()).case.skus == ["A"]


def test_a_return_is_refunded_for_the_units_received(service: CaseService, db: InMemoryDatabase):
    """3 units announced, 2 came back (recorded at receipt): 2 are refunded, and the third
    may be applied for again."""
    import_orders(
        service,
        _order(
            lines=[{**item("A", 1_000, 3), "category": "clothing"}],
            payment=payment(amount=3_000),
            gifts=[],
        ),
    )
    case_id = service.submit(_bare_application(items=[{"sku": "A", "quantity": 3}])).case.id
    assert case_id is not None
    drive(
        service,
        case_id,
        [
            ("approve", Role.MERCHANT),
            ("ship_back", Role.BUYER),
            ("record_return_delivery", Role.CARRIER),
        ],
    )
    received = {"received": [{"sku": "A", "quantity": 2}]}
    service.fire(case_id, "confirm_receipt", MERCHANT, data=received)
    service.fire(case_id, "inspect", MERCHANT, data={})
    refund = [m.payload for m in db.outbox if m.topic == "refund.requested"]
    assert [m["amount"] for m in refund] == [2_000]
    service.fire(case_id, "confirm_refund", PAYMENT, data=data_for("confirm_refund"))
    # then: the account says 2 refunded for 2 000 fen, 1 claimable, 1 000 refundable
    accounted = OrderService(service.uow_factory, service.clock, service.policy).account(
        "o1", BUYER
    )
    line = accounted.line("A")
    assert line is not None
    assert (line.refunded_quantity, line.refunded_amount, line.claimable) == (2, 2_000, 1)
    assert (accounted.paid, accounted.refunded, accounted.refundable) == (3_000, 2_000, 1_000)
    assert service.submit(_bare_application()).case.refund_amount == 1_000


def test_received_units_are_checked_against_the_case(service: CaseService, db: InMemoryDatabase):
    import_orders(service, _order())
    case_id = service.submit(application()).case.id or 0
    drive(
        service,
        case_id,
        [
            ("approve", Role.MERCHANT),
            ("ship_back", Role.BUYER),
            ("record_return_delivery", Role.CARRIER),
        ],
    )
    for data, field in (
        ({"received": [{"sku": "A", "quantity": 2}]}, "data.received.0.quantity"),
        ({"received": [{"sku": "Z", "quantity": 1}]}, "data.received.0.sku"),
    ):
        with pytest.raises(InvalidInput) as refused:
            service.fire(case_id, "confirm_receipt", MERCHANT, data=data)
        assert refused.value.field == field


def test_an_inspection_may_record_the_units_received(service: CaseService, db: InMemoryDatabase):
    """Nothing came back but the gift's value is due: the refund is 0, never negative."""
    import_orders(service, _order())
    case_id = service.submit(application()).case.id or 0
    drive(
        service,
        case_id,
        [
            ("approve", Role.MERCHANT),
            ("ship_back", Role.BUYER),
            ("record_return_delivery", Role.CARRIER),
            ("confirm_receipt", Role.MERCHANT),
        ],
    )
    service.fire(case_id, "inspect", MERCHANT, data={"received": [], "gifts_missing": ["G"]})
    assert service.get(case_id).case.refund_amount == 0


# == the order import and the account =============================================================


def test_an_import_refuses_changes_to_what_was_paid_and_ordered_naming_the_field(
    service: CaseService, db: InMemoryDatabase
):
    first = import_orders(service, _order(delivered_at=None))
    assert (first.imported, first.updated, first.refused) == (1, 0, [])
    changed = import_orders(
        service,
        _order(payment=payment(amount=1)),
        _order(lines=[{**item("A", ONE_PHONE_PRICE, 2), "category": "clothing"}]),
        _order(merchant_id="m2"),
    )
    assert [r.field for r in changed.refused] == ["payment", "lines", "merchant_id"]
    assert [r.index for r in changed.refused] == [0, 1, 2]
    assert db.orders["o1"].payment.amount == 19_900
    # the delivery time may be recorded later, once
    delivered = import_orders(service, _order())
    assert (delivered.imported, delivered.updated) == (0, 1)
    assert db.orders["o1"].delivered_at == NOW - timedelta(days=2)
    again = import_orders(service, _order())
    assert (again.updated, again.unchanged) == (0, 1)
    moved = import_orders(service, _order(delivered_at=NOW - timedelta(days=1)))
    assert [r.field for r in moved.refused] == ["delivered_at"]


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"lines": []}, "lines"),
        ({"lines": [{**item("A", 1), "category": "spaceships"}]}, "lines.0.category"),
        ({"lines": [{**item("A", 1), "category": "clothing"}] * 2}, "lines"),
        (
            {"lines": [{"sku": "A", "quantity": 1, "unit_price": 1.5, "category": "home"}]},
            "lines.0.unit_price",
        ),
        (
            {"payment": {"channel": "wechat_pay", "amount": 1, "paid_at": "2026-11-01T10:00:00"}},
            "payment.paid_at",
        ),
        ({"delivered_at": "2026-11-01T10:00:00"}, "delivered_at"),
        ({"order_id": ""}, "order_id"),
        ({"extra": 1}, "extra"),
    ],
)
def test_a_malformed_order_is_refused_naming_the_field(
    policy: Policy, change: dict[str, Any], field: str
):
    with pytest.raises(InvalidInput) as refused:
        parse_order({**_order(), **change}, policy)
    assert refused.value.field == field


def test_merge_import_keeps_what_was_paid(policy: Policy):
    stored = parse_order(_order(delivered_at=None), policy)
    assert merge_import(None, stored) == stored
    assert merge_import(stored, stored) is None
    delivered = parse_order(_order(), policy)
    merged = merge_import(stored, delivered)
    assert isinstance(merged, Order) and merged.delivered_at == delivered.delivered_at


def test_only_the_order_system_or_an_admin_imports(service: CaseService):
    orders = OrderService(service.uow_factory, service.clock, service.policy)
    for actor in (BUYER, MERCHANT, Actor(Role.CARRIER)):
        with pytest.raises(Forbidden):
            orders.import_orders([_order()], actor)
    assert orders.import_orders([_order()], SYSTEM).imported == 1


def test_an_account_is_shown_to_admin_merchant_and_buyer_only(service: CaseService):
    orders = OrderService(service.uow_factory, service.clock, service.policy)
    orders.import_orders([_order()], ADMIN)
    service.submit(application())
    for actor in (ADMIN, MERCHANT, BUYER):
        shown = orders.account("o1", actor)
        assert (shown.paid, shown.pending, shown.refundable) == (19_900, 19_900, 0)
        assert shown.lines[0].open_quantity == 1
    for actor in (OTHER_BUYER, OTHER_MERCHANT, Actor(Role.CARRIER)):
        with pytest.raises(NotFound) as hidden:
            orders.account("o1", actor)
        with pytest.raises(NotFound) as missing:
            orders.account("o-none", actor)
        assert str(hidden.value) == str(missing.value).replace("o-none", "o1")


def test_the_account_of_an_order_without_cases(policy: Policy):
    accounted = account(parse_order(_order(), policy), [])
    assert (accounted.paid, accounted.refunded, accounted.refundable) == (19_900, 0, 19_900)
    line = accounted.line("A")
    assert line is not None and line.claimable == 1
