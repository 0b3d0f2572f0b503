"""The lifecycle benchmark's scenarios: each a case type's path as steps (someone acts, an event
arrives, time passes until a timer fires), written as data.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from bench import support
from config.sources import SourceKind, Sources, load_sources
from workflow.states import CaseState, Role

#: The timer sweep runs every simulated hour (``aftersales timers run-due`` from a cron job).
SWEEP = timedelta(hours=1)
START = support.T0 + timedelta(days=1)
#: The raw baseline's clock: its timers are never due during the simulation.
FAR = datetime(2200, 1, 1, tzinfo=UTC)
#: Carriers besides the default ``sf-express`` that deliver the outbound parcels.
CARRIERS = ("jd-logistics", "yto-express")


def sources() -> Sources:
    """The default producers and the scenarios' other carriers (producers are scoped: an
    unknown source's event is a dead letter)."""
    configured = load_sources().sources
    return Sources(sources=configured | dict.fromkeys(CARRIERS, SourceKind.CARRIER))


@dataclass(frozen=True)
class Act:
    """A buyer, merchant or the system fires a trigger ``after`` the previous step."""

    after: timedelta
    role: Role
    trigger: str
    data: dict[str, Any] | None = None
    reason: str | None = None


@dataclass(frozen=True)
class Event:
    """A carrier or the payment channel reports ``type``; ``names`` says how it names the case."""

    after: timedelta
    source: str
    type: str
    names: dict[str, Any]
    data: dict[str, Any]


@dataclass(frozen=True)
class Wait:
    """Nobody acts: a timer fires in one of the sweeps meanwhile."""

    after: timedelta


Step = Act | Event | Wait


@dataclass(frozen=True)
class Scenario:
    name: str
    weight: int
    final: CaseState
    #: (case type, category, reason, days since payment, days since delivery or None, price)
    application: tuple[str, str, str, float, float | None, int]
    steps: tuple[Step, ...]


def _timeout(hours: float) -> timedelta:
    """Long enough for a timer of ``hours`` to be due and swept."""
    return timedelta(hours=hours) + SWEEP + timedelta(minutes=1)


H, D, M = timedelta(hours=1), timedelta(days=1), timedelta(minutes=1)
B, MER, SYS = Role.BUYER, Role.MERCHANT, Role.SYSTEM
_RETURN_DELIVERED = ("sf-express", "parcel.delivered")
_BY_RETURN_PARCEL = {"tracking_no": "{ret}"}
_TO_MERCHANT = {"recipient": "merchant"}
_TO_BUYER = {"recipient": "buyer"}


def _refund(result: str, attempt: int) -> Event:
    # A result names the attempt it settles and its amount (the case refunds the whole price).
    data: dict[str, Any] = {"idempotency_key": f"refund-{{case}}-{attempt}", "amount": "{amount}"}
    if result == "refund.succeeded":
        data["reference"] = "wx-{n}"
    else:
        data["error"] = "channel busy"
    return Event(10 * M, "wechat-pay", result, {"case_id": "{case}"}, data)


SCENARIOS: tuple[Scenario, ...] = (
    Scenario(
        "return_refund",
        25,
        CaseState.REFUNDED,
        ("return_refund", "clothing", "no_reason", 5, 2, 19_900),
        (
            Act(3 * H, MER, "approve"),
            Act(1 * H, SYS, "book_pickup", {"carrier": "SF", "pickup_code": "PK-{n}"}),
            Act(1 * D, B, "ship_back", {"tracking_no": "{ret}"}),
            Event(2 * D, *_RETURN_DELIVERED, _BY_RETURN_PARCEL, _TO_MERCHANT),
            Act(4 * H, MER, "confirm_receipt"),
            Act(2 * H, MER, "inspect"),
            _refund("refund.succeeded", 1),
        ),
    ),
    Scenario(
        "return_refund, by timers",
        10,
        CaseState.REFUNDED,
        ("return_refund", "home", "no_reason", 4, 1, 12_800),
        (
            Wait(_timeout(48)),  # auto_approve
            # What the pickup.requested effect does after the approval (effects do not run here).
            Act(1 * H, SYS, "book_pickup", {"carrier": "SF", "pickup_code": "PK-{n}"}),
            # The carrier's first news names the order: the case does not know the parcel yet,
            # only its booked pickup.
            Event(
                1 * D,
                *_RETURN_DELIVERED,
                {"order_id": "{order}", "tracking_no": "{ret}"},
                _TO_MERCHANT,
            ),
            Wait(_timeout(240)),  # auto_receive (inspection deemed passed), then start_refund
            _refund("refund.succeeded", 1),
        ),
    ),
    Scenario(
        "return_refund, cancelled",
        5,
        CaseState.CANCELLED,
        ("return_refund", "clothing", "no_reason", 3, 1, 9_900),
        (Act(2 * H, B, "cancel"),),
    ),
    Scenario(
        "exchange",
        20,
        CaseState.EXCHANGED,
        ("exchange", "phone", "quality_issue", 16, 12, 329_900),
        (
            Act(5 * H, MER, "approve"),
            Act(20 * H, B, "ship_back", {"tracking_no": "{ret}"}),
            Event(1 * D, *_RETURN_DELIVERED, _BY_RETURN_PARCEL, _TO_MERCHANT),
            Act(2 * H, MER, "confirm_receipt"),
            Act(6 * H, MER, "inspect", {"note": "speaker fault confirmed"}),
            Act(8 * H, MER, "ship_replacement", {"tracking_no": "{out}"}),
            Event(1 * D, "jd-logistics", "parcel.delivered", {"tracking_no": "{out}"}, _TO_BUYER),
            Act(3 * H, B, "confirm_delivery"),
        ),
    ),
    Scenario(
        "exchange, rejected",
        5,
        CaseState.CLOSED,
        ("exchange", "phone", "quality_issue", 18, 13, 159_900),
        (
            Act(4 * H, MER, "reject", reason="damage caused by the buyer"),
            Wait(_timeout(168)),  # expire_dispute_window
        ),
    ),
    Scenario(
        "repair",
        15,
        CaseState.REPAIRED,
        ("repair", "electronics", "quality_issue", 155, 150, 89_900),
        (
            Act(20 * H, MER, "approve"),
            Act(1 * D, B, "ship_back", {"tracking_no": "{ret}"}),
            Event(2 * D, *_RETURN_DELIVERED, _BY_RETURN_PARCEL, _TO_MERCHANT),
            Act(1 * H, MER, "confirm_receipt"),
            Act(4 * H, MER, "inspect", {"note": "loose connector"}),
            Act(3 * D, MER, "ship_repaired", {"tracking_no": "{out}"}),
            Event(1 * D, "yto-express", "parcel.delivered", {"tracking_no": "{out}"}, _TO_BUYER),
            Wait(_timeout(240)),  # auto_confirm_delivery
        ),
    ),
    Scenario(
        "refund_only, one failed refund",
        20,
        CaseState.REFUNDED,
        ("refund_only", "home", "not_received", 3, None, 45_800),
        (
            Act(6 * H, MER, "approve"),  # and start_refund
            _refund("refund.failed", 1),
            Wait(_timeout(5 / 60)),  # retry_refund
            _refund("refund.succeeded", 2),
        ),
    ),
)
