"""A small, believable database for looking at the console: the browser tests and the
screenshots (``entrypoints.http.console.screenshots``) seed one with ``seed``.

Cases of two merchants in several states, written three days back on a fake clock so that the
server, on the real clock, finds some deadlines overdue and others still running; a dead letter;
one token per role. Everything goes through the service layer, as real traffic would.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from config.settings import Settings
from entrypoints import composition
from persistence.tokens import SqlTokenStore
from workflow.clock import FakeClock
from workflow.model import Actor
from workflow.payloads import parse_application
from workflow.states import Role

ADMIN = Actor(Role.ADMIN, "seed")
#: How far back the first cases were opened: past the 48 h merchant review.
BACK = timedelta(days=3)


@dataclass(frozen=True)
class Tokens:
    """The secrets of the seeded tokens, and the cases the tests use."""

    admin: str
    merchant_m1: str
    merchant_m2: str
    buyer_b1: str
    #: m1's oldest case: submitted three days ago, its review deadline overdue.
    overdue_case: int
    #: A case of merchant m2 (which m1 must not see).
    other_merchants_case: int
    #: m1's cases still awaiting review (bulk approve).
    to_review: tuple[int, ...]


def _order(order_id: str, buyer: str, merchant: str, paid: datetime, sku: str) -> dict[str, Any]:
    return {
        "order_id": order_id,
        "buyer_id": buyer,
        "merchant_id": merchant,
        "payment": {"channel": "wechat_pay", "amount": 39800, "paid_at": paid.isoformat()},
        "delivered_at": (paid + timedelta(days=1)).isoformat(),
        "lines": [{"sku": sku, "quantity": 2, "unit_price": 19900, "category": "clothing"}],
        "gifts": [{"sku": "socks", "quantity": 1, "value": 500}],
    }


def seed(settings: Settings, now: datetime) -> Tokens:
    """Write the showcase into the (migrated, empty) database of ``settings``."""
    clock = FakeClock(now - BACK)
    service = composition.build_service(settings, clock)
    orders = composition.build_order_service(settings, service)
    paid = now - BACK - timedelta(days=2)
    plan = [
        ("o-1001", "b1", "m1", "shirt-m"),
        ("o-1002", "b2", "m1", "jacket-l"),
        ("o-1003", "b3", "m1", "scarf"),
        ("o-1004", "b4", "m1", "shoes-41"),
        ("o-1005", "b5", "m1", "hat"),
        ("o-2001", "b6", "m2", "lamp"),
        ("o-2002", "b7", "m2", "kettle"),
    ]
    orders.import_orders(
        [_order(order_id, buyer, merchant, paid, sku) for order_id, buyer, merchant, sku in plan],
        ADMIN,
    )
    ids: dict[str, int] = {}

    def submit(order_id: str, buyer: str, sku: str) -> None:
        application = {
            "type": "exchange" if order_id == "o-1004" else "return_refund",
            "order_id": order_id,
            "buyer_id": buyer,
            "reason": "quality_issue" if order_id == "o-1004" else "no_reason",
            "items": [{"sku": sku, "quantity": 1}],
            "description": "too small" if order_id == "o-1001" else "",
        }
        view = service.submit(parse_application(application), Actor(Role.BUYER, buyer))
        assert view.case.id is not None
        ids[order_id] = view.case.id

    for order_id, buyer, _merchant, sku in plan:
        if order_id != "o-1005":
            submit(order_id, buyer, sku)
            clock.advance(timedelta(hours=6))
    m1 = Actor(Role.MERCHANT, "m1")
    service.fire(ids["o-1002"], "approve", m1)
    service.fire(ids["o-1002"], "ship_back", Actor(Role.BUYER, "b2"), {"tracking_no": "SF1002"})
    service.fire(ids["o-1003"], "approve", m1)
    service.fire(ids["o-1003"], "ship_back", Actor(Role.BUYER, "b3"), {"tracking_no": "SF1003"})
    service.fire(ids["o-2002"], "reject", Actor(Role.MERCHANT, "m2"), reason="used item")
    # One of m1's cases opened two hours ago: its review deadline still runs.
    clock.set(now - timedelta(hours=2))
    submit("o-1005", "b5", "hat")
    # A carrier event for a parcel no case knows: a dead letter to replay or discard.
    composition.build_event_service(settings, service).ingest(
        {
            "event_id": "sf-77",
            "source": "sf-express",
            "type": "parcel.delivered",
            "occurred_at": (now - timedelta(hours=1)).isoformat(),
            "tracking_no": "SF-UNKNOWN",
            "data": {"recipient": "merchant"},
        }
    )
    tokens = SqlTokenStore(composition.make_engine_for(settings))
    secrets = {
        scope: tokens.create(role, subject, "showcase", now)[1]
        for scope, role, subject in (
            ("admin", "admin", "ops"),
            ("m1", "merchant", "m1"),
            ("m2", "merchant", "m2"),
            ("b1", "buyer", "b1"),
        )
    }
    return Tokens(
        admin=secrets["admin"],
        merchant_m1=secrets["m1"],
        merchant_m2=secrets["m2"],
        buyer_b1=secrets["b1"],
        overdue_case=ids["o-1001"],
        other_merchants_case=ids["o-2001"],
        to_review=(ids["o-1001"], ids["o-1005"]),
    )
