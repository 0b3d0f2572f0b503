"""The events benchmark's cases and events: one template case per flow, copied in bulk, and
the events that move each copy one step.

Producers are scoped (RULES.md part C): each feed (a round's kind) sends its parcel events from
a carrier source ``<feed>-parcel`` and its refund results from a payment source
``<feed>-refund``, listed in a sources file the workers and the API read
(``AFTERSALES_SOURCES_FILE``). The pickup copies have a booked pickup, so the carrier's first
scan may name a new parcel; the delivery events name the return parcel the buyer recorded; the
refund results name the attempt key and the amount in flight.
"""

from __future__ import annotations

import collections
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from bench import support
from config.settings import DatabaseSettings, Settings
from config.sources import SourceKind
from entrypoints.composition import build_service
from persistence.db import make_engine
from workflow.clock import FakeClock
from workflow.model import SYSTEM, Actor
from workflow.service import CaseService
from workflow.states import CaseState, Role

BUYER = Actor(Role.BUYER, "b-1")
#: The return parcel every copy of the delivery template has (recorded at ``ship_back``).
RETURN_PARCEL = "RT-e2e"
#: The booking every copy of the pickup template has (as the carrier gateway would book it).
BOOKED_PICKUP = {"carrier": "sf-express", "pickup_code": "PK-e2e", "window": "today 14:00-18:00"}


@dataclass(frozen=True)
class Flow:
    """A kind of seeded case and the event that moves it one step."""

    name: str
    seeded: CaseState
    reached: CaseState
    trigger: str
    event_type: str
    kind: SourceKind


FLOWS = (
    # A carrier's first scan names a parcel the case does not know yet: only a booked pickup's.
    Flow(
        "pickup",
        CaseState.PICKUP,
        CaseState.SHIPPED_BACK,
        "record_pickup",
        "parcel.picked_up",
        SourceKind.CARRIER,
    ),
    Flow(
        "delivery",
        CaseState.SHIPPED_BACK,
        CaseState.RETURN_DELIVERED,
        "record_return_delivery",
        "parcel.delivered",
        SourceKind.CARRIER,
    ),
    Flow(
        "refund",
        CaseState.REFUNDING,
        CaseState.REFUNDED,
        "confirm_refund",
        "refund.succeeded",
        SourceKind.PAYMENT,
    ),
)

_SUFFIX = {SourceKind.CARRIER: "parcel", SourceKind.PAYMENT: "refund"}


def feed_name(round_: int, kind: str) -> str:
    """The feed of one round's kind (``feed-r1-single``); round 0 is the warm-up."""
    return f"feed-r{round_}-{kind}"


#: The round ``bench.events_e2e`` profiles in, and the one ``bench.events_latency`` paces in.
PROFILE_ROUND, PACED_ROUND = 90, 99


def run_feeds(rounds: int) -> list[str]:
    """Every feed a run of ``rounds`` may send: the warm-up (round 0), each round, the profile's
    and the paced latency's, for each kind that sends events."""
    kinds = ("single", "batch", "http")
    feeds = [feed_name(r, kind) for r in [*range(rounds + 1), PROFILE_ROUND] for kind in kinds]
    return feeds + [feed_name(PACED_ROUND, f"paced-{kind}") for kind in kinds]


def feed_source(feed: str, kind: SourceKind) -> str:
    """The source of ``feed`` that sends ``kind``'s events (``feed-r1-single-parcel``)."""
    return f"{feed}-{_SUFFIX[kind]}"


def feed_sources(feed: str) -> list[str]:
    """Every source of ``feed``."""
    return [feed_source(feed, kind) for kind in _SUFFIX]


def write_sources(path: Path, feeds: Sequence[str]) -> Path:
    """A sources file (``AFTERSALES_SOURCES_FILE``) configuring every source of ``feeds``."""
    lines = ["[sources]"]
    lines += [f'"{feed_source(feed, kind)}" = "{kind.value}"' for feed in feeds for kind in _SUFFIX]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


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


def make_events(seeded: Seeded, feed: str, count: int) -> list[Event]:
    """``count`` events of ``feed``, the flows taking turns, each on a case of its own; event ids
    count up across the feed's sources."""
    events = []
    occurred = datetime.now(UTC).isoformat()
    for n in range(count):
        flow = FLOWS[n % len(FLOWS)]
        source = feed_source(feed, flow.kind)
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
            envelope |= {
                "case_id": case_id,
                "tracking_no": RETURN_PARCEL,
                "data": {"recipient": "merchant"},
            }
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
    if flow.seeded is CaseState.PICKUP:
        steps.append(("book_pickup", SYSTEM, BOOKED_PICKUP))
    else:
        steps.append(("ship_back", BUYER, {"tracking_no": RETURN_PARCEL}))
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
