"""A small, believable database for looking at the console: the browser tests and the
screenshots (``entrypoints.console_screenshots``) seed one with ``seed``.

Cases of two merchants in several states, written three days back on a fake clock so that the
server, on the real clock, finds some deadlines overdue and others still running; a dead letter;
one token per role. Everything goes through the service layer, as real traffic would.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from config.settings import DatabaseSettings, Settings, sqlite_url
from entrypoints import composition
from entrypoints.processes import ChildProcess, free_port
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
    #: m1's case opened two hours ago: awaiting review, its deadline still running.
    fresh_case: int
    #: m1's exchange awaiting review (overdue).
    exchange_case: int
    #: m1's case whose return is on its way back (its receipt can be confirmed).
    shipped_back_case: int


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
        fresh_case=ids["o-1005"],
        exchange_case=ids["o-1004"],
        shipped_back_case=ids["o-1002"],
    )


@dataclass(frozen=True)
class ShowcaseServer:
    """``aftersales serve`` on a seeded database: its base URL and the seeded tokens and cases."""

    url: str
    seeded: Tokens
    process: ChildProcess


@contextmanager
def showcase_server(folder: Path, timeout: float = 60.0) -> Iterator[ShowcaseServer]:
    """Seed a SQLite database in ``folder`` and serve it with ``aftersales serve`` on a free
    port of 127.0.0.1, as a user starts it; stopped on exit."""
    folder.mkdir(parents=True, exist_ok=True)
    url = sqlite_url(folder / "console.db")
    env = {**os.environ, "AFTERSALES_DATABASE_URL": url, "NO_COLOR": "1"}
    env.pop("AFTERSALES_CLOCK_FILE", None)
    seeded = seed(Settings(database=DatabaseSettings(url=url)), datetime.now(UTC))
    port = free_port()
    command = [sys.executable, "-m", "entrypoints.cli", "serve", "--port", str(port)]
    server = ChildProcess(command, folder / "serve.log", env=env, cwd=folder, die_with_parent=True)
    server.start()
    try:
        server.wait_port(port, timeout)
        yield ShowcaseServer(f"http://127.0.0.1:{port}", seeded, server)
    finally:
        server.stop()
