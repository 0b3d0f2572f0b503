"""Builders shared by the unit tests: actors, applications, trigger data, paths to every state.

Plain functions (no fixtures) so the hypothesis state machine can use them too; ``conftest.py``
wraps them as fixtures. Everything here is written out by hand from RULES.md, never derived from
``workflow.definitions``: the tests compare the implementation against it.
"""

from __future__ import annotations

import contextlib
import copy
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from workflow.memory import InMemoryDatabase
from workflow.model import Actor
from workflow.orders import account
from workflow.orders_service import ImportResult, OrderService
from workflow.service import CaseService, CaseView
from workflow.states import CaseState, CaseType, Role

#: The fixed "now" of the unit tests: Friday 2026-11-20, 10:00 in Shanghai.
NOW = datetime(2026, 11, 20, 2, 0, tzinfo=UTC)
SHANGHAI = ZoneInfo("Asia/Shanghai")

BUYER = Actor(Role.BUYER, "b1")
MERCHANT = Actor(Role.MERCHANT, "m1")
ADMIN = Actor(Role.ADMIN, "ops1")
SYSTEM = Actor(Role.SYSTEM)
CARRIER = Actor(Role.CARRIER)
PAYMENT = Actor(Role.PAYMENT)
OTHER_BUYER = Actor(Role.BUYER, "b2")
OTHER_MERCHANT = Actor(Role.MERCHANT, "m2")

#: The actor used for each role when a test only cares about the role.
ACTORS: dict[Role, Actor] = {
    Role.BUYER: BUYER,
    Role.MERCHANT: MERCHANT,
    Role.ADMIN: ADMIN,
    Role.SYSTEM: SYSTEM,
    Role.CARRIER: CARRIER,
    Role.PAYMENT: PAYMENT,
}

REASON = "checked by the unit tests"
#: Triggers that need a reason whoever fires them (RULES.md: a rejection says why).
NEEDS_REASON = frozenset({"reject", "fail_inspection"})

ITEM_PRICE = 19_900
GIFT_VALUE = 500

#: Per case type: a category and reason the policy accepts two days after delivery.
TYPE_DEFAULTS: dict[CaseType, dict[str, Any]] = {
    CaseType.RETURN_REFUND: {"category": "clothing", "reason": "no_reason"},
    CaseType.EXCHANGE: {"category": "clothing", "reason": "no_reason"},
    CaseType.REPAIR: {"category": "electronics", "reason": "quality_issue"},
    CaseType.REFUND_ONLY: {"category": "clothing", "reason": "damaged_in_transit"},
}


def application(
    case_type: CaseType | str = CaseType.RETURN_REFUND,
    *,
    now: datetime = NOW,
    **overrides: Any,
) -> dict[str, Any]:
    """An application as a buyer submits it: b1 at m1, paid by WeChat, delivered 2 days ago.

    ``overrides`` replace top-level keys (``payment``, ``items``, ``delivered_at`` ...).
    """
    case_type = CaseType(case_type)
    app: dict[str, Any] = {
        "type": case_type.value,
        "order_id": "o1",
        "buyer_id": BUYER.id,
        "merchant_id": MERCHANT.id,
        **TYPE_DEFAULTS[case_type],
        "payment": payment(amount=ITEM_PRICE, paid_at=now - timedelta(days=5)),
        "delivered_at": now - timedelta(days=2),
        "items": [item("A", ITEM_PRICE)],
        "gifts": [{"sku": "G", "quantity": 1, "value": GIFT_VALUE}],
        "description": "",
    }
    app.update(overrides)
    return app


def order_for(app: dict[str, Any], **overrides: Any) -> dict[str, Any]:
    """The order of record an application describes: its order, buyer, merchant, payment,
    delivery time, items as lines (the application's category on each) and gifts.

    ``overrides`` replace top-level keys of the order (``lines``, ``payment`` ...)."""
    order: dict[str, Any] = {
        "order_id": app["order_id"],
        "buyer_id": app["buyer_id"],
        "merchant_id": app.get("merchant_id", MERCHANT.id),
        "payment": copy.deepcopy(app.get("payment", payment())),
        "delivered_at": app.get("delivered_at"),
        "lines": [
            {
                "sku": entry["sku"],
                "quantity": entry["quantity"],
                "unit_price": entry.get("unit_price", ITEM_PRICE),
                "category": app.get("category", "clothing"),
            }
            for entry in app["items"]
        ],
        "gifts": copy.deepcopy(app.get("gifts") or []),
    }
    order.update(overrides)
    return order


def import_orders(service: CaseService, *orders: dict[str, Any]) -> ImportResult:
    """Import orders of record as an admin, beside ``service``."""
    orders_service = OrderService(service.uow_factory, service.clock, service.policy)
    return orders_service.import_orders(list(orders), ADMIN)


def submit_with_order(
    service: CaseService,
    app: dict[str, Any],
    actor: Actor | None = None,
    idempotency_key: str | None = None,
) -> CaseView:
    """Import the order the application describes (``order_for``; an order already imported
    with the same facts stays as it is), then submit the application.

    An order the import refuses (the application is malformed) is not imported: the submission
    then says why the application is wrong."""
    if isinstance(app, dict) and isinstance(app.get("items"), list):
        # Too malformed to describe an order: submit() says what is wrong.
        with contextlib.suppress(KeyError, TypeError, AttributeError):
            import_orders(service, order_for(app))
    return service.submit(app, actor, idempotency_key)


def open_units(db: InMemoryDatabase, order_id: str) -> dict[str, int]:
    """Units per sku of the order that open cases hold (the lines with any)."""
    cases = [case for case in db.cases.values() if case.order_id == order_id]
    lines = account(db.orders[order_id], cases).lines
    return {line.sku: line.open_quantity for line in lines if line.open_quantity}


def payment(
    amount: int = ITEM_PRICE, paid_at: datetime = NOW - timedelta(days=5), channel="wechat_pay"
) -> dict[str, Any]:
    return {"channel": channel, "amount": amount, "paid_at": paid_at}


def item(sku: str, unit_price: int, quantity: int = 1) -> dict[str, Any]:
    return {"sku": sku, "quantity": quantity, "unit_price": unit_price}


#: Well-formed data for each trigger that takes some (payloads.TRIGGER_DATA).
TRIGGER_DATA: dict[str, dict[str, Any]] = {
    "ship_back": {"tracking_no": "SF1001", "carrier": "SF"},
    "ship_replacement": {"tracking_no": "SF2001", "carrier": "SF"},
    "ship_repaired": {"tracking_no": "SF3001", "carrier": "SF"},
    "record_pickup": {"tracking_no": "SF1001", "carrier": "SF"},
    "record_return_delivery": {"tracking_no": "SF1001"},
    "record_buyer_delivery": {"tracking_no": "SF2001"},
    "report_parcel_lost": {"note": "lost at the Hangzhou hub"},
    "report_parcel_damaged": {"note": "box crushed"},
    "book_pickup": {"carrier": "SF", "pickup_code": "PK-1", "window": "tomorrow 9-12"},
    "inspect": {"note": "complete, labels on"},
    "provide_bank_account": {"holder": "Li Lei", "bank": "ICBC", "account_no": "6222020200112233"},
    "confirm_refund": {"reference": "wx-refund-1"},
    "fail_refund": {"error": "channel timeout"},
    "revise": {"description": "added photos of the defect"},
}


def data_for(trigger: str) -> dict[str, Any] | None:
    data = TRIGGER_DATA.get(trigger)
    return copy.deepcopy(data) if data is not None else None


def reason_for(trigger: str, role: Role) -> str | None:
    return REASON if role is Role.ADMIN or trigger in NEEDS_REASON else None


# -- driving a case to any state through legal triggers ----------------------------------------

Step = tuple[str, Role]

_TO_RECEIVED: list[Step] = [
    ("approve", Role.MERCHANT),
    ("ship_back", Role.BUYER),
    ("record_return_delivery", Role.CARRIER),
    ("confirm_receipt", Role.MERCHANT),
]

_REVIEW_EXITS: dict[str, list[Step]] = {
    "submitted": [],
    "rejected": [("reject", Role.MERCHANT)],
    "disputed": [("reject", Role.MERCHANT), ("escalate", Role.BUYER)],
    "cancelled": [("cancel", Role.BUYER)],
}

_RETURN_LEG: dict[str, list[Step]] = {
    **_REVIEW_EXITS,
    "approved": [("approve", Role.MERCHANT)],
    "pickup": [("approve", Role.MERCHANT), ("book_pickup", Role.SYSTEM)],
    "shipped_back": _TO_RECEIVED[:2],
    "return_delivered": _TO_RECEIVED[:3],
    "received": _TO_RECEIVED,
    # A dispute opened once the merchant holds the goods: a ruling resumes after inspection.
    "disputed(goods_back)": [*_TO_RECEIVED, ("escalate", Role.ADMIN)],
    "closed": [("approve", Role.MERCHANT), ("expire_return", Role.SYSTEM)],
}


def _refund_leg(to_refunding: list[Step]) -> dict[str, list[Step]]:
    return {
        "refunding": to_refunding,
        "refund_failed": [*to_refunding, ("fail_refund", Role.PAYMENT)],
        "awaiting_bank_account": [
            *to_refunding,
            ("fail_refund", Role.PAYMENT),
            ("switch_to_bank_transfer", Role.ADMIN),
        ],
        "refunded": [*to_refunding, ("confirm_refund", Role.PAYMENT)],
    }


def _outbound(ship: str, done: str) -> dict[str, list[Step]]:
    inspected = [*_TO_RECEIVED, ("inspect", Role.MERCHANT)]
    shipped = [*inspected, (ship, Role.MERCHANT)]
    return {
        **_RETURN_LEG,
        "inspected": inspected,
        "shipped_to_buyer": shipped,
        "delivered_to_buyer": [*shipped, ("record_buyer_delivery", Role.CARRIER)],
        done: [*shipped, ("record_buyer_delivery", Role.CARRIER), ("confirm_delivery", Role.BUYER)],
        **_refund_leg([*inspected, ("convert_to_refund", Role.MERCHANT)]),
    }


#: For each case type, a label per state it can rest in, with the legal steps leading there.
#: A label is the state's name, optionally with a variant in brackets.
PATHS: dict[CaseType, dict[str, list[Step]]] = {
    CaseType.RETURN_REFUND: {
        **_RETURN_LEG,
        # inspect is followed at once by start_refund: a return_refund case never rests inspected.
        **_refund_leg([*_TO_RECEIVED, ("inspect", Role.MERCHANT)]),
    },
    CaseType.EXCHANGE: _outbound("ship_replacement", "exchanged"),
    CaseType.REPAIR: _outbound("ship_repaired", "repaired"),
    CaseType.REFUND_ONLY: {
        **_REVIEW_EXITS,
        # Goods never received: no merchant consent needed (see VARIANT_APPLICATIONS).
        "submitted(not_received)": [],
        # approve is followed at once by start_refund: a refund_only case never rests approved.
        **_refund_leg([("approve", Role.MERCHANT)]),
        "closed": [("reject", Role.MERCHANT), ("expire_dispute_window", Role.SYSTEM)],
    },
}


#: A label whose case starts from another application than the type's default.
VARIANT_APPLICATIONS: dict[str, dict[str, Any]] = {
    "submitted(not_received)": {"reason": "not_received", "delivered_at": None},
}


def state_of(label: str) -> CaseState:
    return CaseState(label.split("(")[0])


def drive(service: CaseService, case_id: int, steps: list[Step]) -> None:
    for trigger, role in steps:
        service.fire(
            case_id, trigger, ACTORS[role], data=data_for(trigger), reason=reason_for(trigger, role)
        )


def drive_to(service: CaseService, case_id: int, label: str) -> None:
    """Move a freshly submitted case to ``label`` (see ``PATHS``) and check it got there."""
    case_type = service.get(case_id).case.type
    drive(service, case_id, PATHS[case_type][label])
    reached = service.get(case_id).case.state
    assert reached is state_of(label), f"path to {label} ended in {reached}"


def submit_in(
    service: CaseService, case_type: CaseType | str, label: str = "submitted", **overrides: Any
) -> int:
    """Submit a default application of ``case_type`` (at the service clock) and drive it."""
    overrides = {**VARIANT_APPLICATIONS.get(label, {}), **overrides}
    view = submit_with_order(service, application(case_type, now=service.clock.now(), **overrides))
    assert view.case.id is not None
    drive_to(service, view.case.id, label)
    return view.case.id


def shanghai(year: int, month: int, day: int, hour: int = 0, minute: int = 0) -> datetime:
    """A wall-clock time in the platform's zone, e.g. ``shanghai(2026, 11, 25, 23, 59)``."""
    return datetime(year, month, day, hour, minute, tzinfo=SHANGHAI)
