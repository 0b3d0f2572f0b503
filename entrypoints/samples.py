"""``aftersales demo --write-samples DIR``: an order of record and an application for it, dated
relative to now, so the README's walk-through works on whatever day it is read.

The order was paid three days ago and delivered yesterday: inside the 7-day no-reason window
for the next six days. Two shirts, one of them returned; a gift the merchant declared.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from workflow.model import Actor
from workflow.orders_service import ImportResult, OrderService
from workflow.states import Role

ORDER_ID = "o-1001"
BUYER_ID = "b1"
MERCHANT_ID = "m1"
ORDERS_FILE = "orders.jsonl"
APPLICATION_FILE = "application.json"


def sample_order(now: datetime, zone: ZoneInfo) -> dict[str, Any]:
    """Two ¥199 shirts and a gift, paid three days before ``now``, delivered the day before."""
    local = now.astimezone(zone).replace(microsecond=0)
    return {
        "order_id": ORDER_ID,
        "buyer_id": BUYER_ID,
        "merchant_id": MERCHANT_ID,
        "payment": {
            "channel": "wechat_pay",
            "amount": 39800,
            "paid_at": (local - timedelta(days=3)).isoformat(),
        },
        "delivered_at": (local - timedelta(days=1)).isoformat(),
        "lines": [{"sku": "shirt-m", "quantity": 2, "unit_price": 19900, "category": "clothing"}],
        "gifts": [{"sku": "socks", "quantity": 1, "value": 500}],
    }


def sample_application() -> dict[str, Any]:
    """A no-reason return of one of the order's two shirts: its facts come from the order."""
    return {
        "type": "return_refund",
        "order_id": ORDER_ID,
        "buyer_id": BUYER_ID,
        "reason": "no_reason",
        "items": [{"sku": "shirt-m", "quantity": 1}],
        "description": "too small",
    }


def write_samples(folder: Path, now: datetime, zone: ZoneInfo) -> list[Path]:
    """Write the sample order (JSON lines) and application into ``folder``; their paths."""
    folder.mkdir(parents=True, exist_ok=True)
    orders = folder / ORDERS_FILE
    orders.write_text(json.dumps(sample_order(now, zone), ensure_ascii=False) + "\n", "utf-8")
    application = folder / APPLICATION_FILE
    application.write_text(json.dumps(sample_application(), indent=2) + "\n", "utf-8")
    return [orders, application]


def order_document_for(application: Mapping[str, Any]) -> dict[str, Any]:
    """The order document an application of the old shape (one that stated its order:
    merchant, category, payment, delivery time, items with prices, gifts) describes, for
    ``parse_order``: what tests and benchmarks import before they submit it. Values
    the application leaves out are left out here too (the import then says what is missing)."""
    items = application.get("items") or []
    category = application.get("category")
    return {
        "order_id": application.get("order_id"),
        "buyer_id": application.get("buyer_id"),
        "merchant_id": application.get("merchant_id"),
        "payment": application.get("payment"),
        "delivered_at": application.get("delivered_at"),
        "lines": [
            {
                "sku": item.get("sku"),
                "quantity": item.get("quantity"),
                "unit_price": item.get("unit_price"),
                "category": category,
            }
            for item in items
            if isinstance(item, Mapping)
        ],
        "gifts": list(application.get("gifts") or []),
    }


def import_orders_for(
    orders: OrderService, applications: Sequence[Mapping[str, Any]]
) -> ImportResult:
    """As an admin, import the orders these applications of the old shape describe."""
    documents = [order_document_for(app) for app in applications]
    return orders.import_orders(documents, Actor(Role.ADMIN, "orders-helper"))
