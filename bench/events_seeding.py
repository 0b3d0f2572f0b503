"""The events benchmark's cases and events: one template case per flow, copied in bulk, and
the events that move each copy one step.
"""

from __future__ import annotations

import collections
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import sqlalchemy as sa

from bench import support
from config.settings import DatabaseSettings, Settings
from entrypoints.composition import build_service
from persistence.db import make_engine
from workflow.clock import FakeClock
from workflow.model import Actor
from workflow.service import CaseService
from workflow.states import CaseState, Role

BUYER = Actor(Role.BUYER, "b-1")


@dataclass(frozen=True)
class Flow:
    """A kind of seeded case and the event that moves it one step."""

    name: str
    seeded: CaseState
    reached: CaseState
    trigger: str
    event_type: str


FLOWS = (
    Flow("pickup", CaseState.APPROVED, CaseState.SHIPPED_BACK, "record_pickup", "parcel.picked_up"),
    Flow(
        "delivery",
        CaseState.SHIPPED_BACK,
        CaseState.RETURN_DELIVERED,
        "record_return_delivery",
        "parcel.delivered",
    ),
    Flow("refund", CaseState.REFUNDING, CaseState.REFUNDED, "confirm_refund", "refund.succeeded"),
)


@dataclass
class Seeded:
    """The seeded cases of each flow not used yet, and what the refund events must name."""

    url: str
    templates: dict[str, int]
    versions: dict[str, int]
    refund_key: str
    refund_amount: int
    pools: dict[str, collections.deque[int]] = field(default_factory=dict)
    orders: dict[int, str] = field(default_factory=dict)
    batches: int = 0

    def grow(self, counts: Sequence[int]) -> None:
        """Enough set-based copies of the templates (``support.copy_case``) for ``make_events``
        to be called with each of ``counts``."""
        engine = make_engine(self.url)
        self.batches += 1
        for flow in FLOWS:
            # make_events starts every call with the first flow.
            count = sum(math.ceil(c / len(FLOWS)) for c in counts)
            tag = f"e2e{self.batches}-{flow.name}"
            ids = support.copy_case(engine, self.templates[flow.name], count, tag)
            self.pools.setdefault(flow.name, collections.deque()).extend(ids)
            if flow is FLOWS[0]:
                self.orders.update((case_id, f"o-{tag}-{n}") for n, case_id in enumerate(ids, 1))

    def take(self, flow: Flow) -> int:
        pool = self.pools[flow.name]
        if not pool:
            raise RuntimeError(f"no seeded {flow.name} case left")
        return pool.popleft()


@dataclass(frozen=True)
class Event:
    source: str
    event_id: str
    case_id: int
    flow: Flow
    envelope: dict[str, Any]


def make_events(seeded: Seeded, source: str, count: int) -> list[Event]:
    """``count`` events of ``source``, the flows taking turns, each on a case of its own."""
    events = []
    occurred = datetime.now(UTC).isoformat()
    for n in range(count):
        flow = FLOWS[n % len(FLOWS)]
        case_id = seeded.take(flow)
        event_id = f"{n:07d}"
        envelope: dict[str, Any] = {
            "event_id": event_id,
            "source": source,
            "type": flow.event_type,
            "occurred_at": occurred,
        }
        if flow.name == "pickup":
            envelope |= {"order_id": seeded.orders[case_id], "tracking_no": f"PU{case_id}"}
            envelope["data"] = {"recipient": "merchant"}
        elif flow.name == "delivery":
            envelope |= {"case_id": case_id, "data": {"recipient": "merchant"}}
        else:
            envelope |= {
                "case_id": case_id,
                "data": {
                    "idempotency_key": seeded.refund_key,
                    "reference": f"wx-{case_id}",
                    "amount": seeded.refund_amount,
                },
            }
        events.append(Event(source, event_id, case_id, flow, envelope))
    return events


def _application(order_id: str, now: datetime) -> dict[str, Any]:
    """``support.application`` paid and delivered relative to ``now``: the workers run on the
    system clock, so every deadline must lie ahead of today, whenever the bench runs."""
    application = support.application(order_id)
    application["payment"]["paid_at"] = (now - timedelta(days=5)).isoformat()
    application["delivered_at"] = (now - timedelta(days=2)).isoformat()
    return application


def _template(service: CaseService, clock: FakeClock, flow: Flow, tag: str) -> int:
    """One case driven through the service into ``flow.seeded``."""
    app = _application(f"o-{tag}-{flow.name}", clock.now())
    case_id = support.submit_with_order(service, app).case.id
    assert case_id is not None
    steps: list[tuple[str, Actor, dict[str, Any] | None]] = [("approve", support.MERCHANT, None)]
    if flow.seeded is not CaseState.APPROVED:
        steps.append(("ship_back", BUYER, {"tracking_no": f"RT-{tag}"}))
    if flow.seeded is CaseState.REFUNDING:
        # Inspecting starts the refund in the same transaction.
        steps += [("confirm_receipt", support.MERCHANT, None), ("inspect", support.MERCHANT, None)]
    for trigger, actor, data in steps:
        clock.advance(timedelta(minutes=5))
        service.fire(case_id, trigger, actor, data)
    state = service.get(case_id).case.state
    if state is not flow.seeded:
        raise RuntimeError(f"{flow.name} template reached {state}, not {flow.seeded}")
    return case_id


def seed(url: str) -> Seeded:
    """A template case of each flow, driven through ``CaseService`` an hour ago; their outbox
    rows are deleted so that the workers have nothing to do but the events. ``Seeded.grow``
    copies them."""
    clock = FakeClock(datetime.now(UTC) - timedelta(hours=1))
    service = build_service(Settings(database=DatabaseSettings(url=url)), clock)
    templates = {flow.name: _template(service, clock, flow, "e2e") for flow in FLOWS}
    refund = service.get(templates["refund"]).case
    assert refund.refund_key is not None and refund.refund_amount is not None
    with make_engine(url).begin() as connection:
        connection.execute(sa.text("DELETE FROM outbox"))
    versions = {name: service.get(case_id).case.version for name, case_id in templates.items()}
    return Seeded(url, templates, versions, refund.refund_key, refund.refund_amount)
