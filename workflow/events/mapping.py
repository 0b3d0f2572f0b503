"""What each event type does to a case, as data: the triggers it fires, as whom, with what data.

``EVENT_RULES`` maps each type to its routes, which say what an event means in each state: that
is where the out-of-order policy lives. ``plan`` applies them to one case; ``mapping_markdown``
prints them as the table of docs/events.md.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from pydantic import BaseModel, ValidationError

from workflow import engine
from workflow.definitions import RETURN_LEG
from workflow.errors import AftersalesError, InvalidInput
from workflow.events.envelope import (
    BuyerData,
    CarrierData,
    Envelope,
    EventType,
    MerchantData,
    PaymentData,
)
from workflow.model import Actor, Case
from workflow.payloads import describe_validation_error
from workflow.states import CaseState, CaseType, Role


class Leg(StrEnum):
    """Which way a parcel travels."""

    #: From the buyer to the merchant.
    RETURN = "return"
    #: A replacement or repaired item from the merchant to the buyer.
    OUTBOUND = "outbound"


@dataclass(frozen=True)
class Route:
    """What an event does to a case in some states: fire ``triggers`` (in one transaction), or,
    when there are none, acknowledge it without a transition (``ignored``, with ``note``)."""

    triggers: tuple[str, ...]
    #: The states this row covers; None: any state.
    states: frozenset[CaseState] | None = None
    #: Only for a parcel on this leg (carrier events).
    leg: Leg | None = None
    #: Name of a condition in ``CONDITIONS`` that must hold too.
    when: str | None = None
    note: str = ""


@dataclass(frozen=True)
class EventRule:
    """One event type: who acts, how ``data`` becomes the trigger's data, and its routes.

    Routes are tried in order and the first that matches wins. Cases of other types than
    ``types`` and states no route covers fire ``fallback``, which the engine accepts or refuses
    (the refusal is the dead letter's reason).
    """

    type: EventType
    role: Role
    #: Name of the data transform in ``_TRANSFORMS``: carrier, payment, merchant, buyer.
    data: str
    fallback: str
    routes: tuple[Route, ...] = ()
    types: frozenset[CaseType] = frozenset(CaseType)


def _states(*states: CaseState) -> frozenset[CaseState]:
    return frozenset(states)


#: The merchant holds (or held) the returned goods: a carrier's return-leg news is stale.
MERCHANT_HAS_RETURN = _states(
    CaseState.RECEIVED,
    CaseState.INSPECTED,
    CaseState.REFUNDING,
    CaseState.REFUND_FAILED,
    CaseState.AWAITING_BANK_ACCOUNT,
    CaseState.REFUNDED,
    CaseState.SHIPPED_TO_BUYER,
    CaseState.DELIVERED_TO_BUYER,
    CaseState.EXCHANGED,
    CaseState.REPAIRED,
)
#: The return parcel has left the buyer: a pickup is stale.
PAST_PICKUP = MERCHANT_HAS_RETURN | _states(CaseState.SHIPPED_BACK, CaseState.RETURN_DELIVERED)


def _carrier(type_: EventType, fallback: str, *routes: Route) -> EventRule:
    return EventRule(type_, Role.CARRIER, "carrier", fallback, routes, RETURN_LEG)


def _payment(type_: EventType, fallback: str, *routes: Route) -> EventRule:
    return EventRule(type_, Role.PAYMENT, "payment", fallback, routes)


def _party(type_: EventType, trigger: str, *routes: Route) -> EventRule:
    role = Role.MERCHANT if type_.value.startswith("merchant.") else Role.BUYER
    return EventRule(type_, role, role.value, trigger, routes)


def _ignore(states: frozenset[CaseState] | None, note: str, **kwargs: Any) -> Route:
    return Route((), states, note=note, **kwargs)


_RULES: tuple[EventRule, ...] = (
    _carrier(
        EventType.PARCEL_PICKED_UP,
        "record_pickup",
        Route(("record_pickup",), _states(CaseState.APPROVED, CaseState.PICKUP), Leg.RETURN),
        _ignore(None, "an outbound pickup is informational", leg=Leg.OUTBOUND),
        _ignore(
            PAST_PICKUP, "stale: the return parcel already moved past its pickup", leg=Leg.RETURN
        ),
        _ignore(
            _states(CaseState.DISPUTED),
            "stale: the return parcel was already on its way",
            when="return_parcel_known",
        ),
    ),
    _carrier(
        EventType.PARCEL_DELIVERED,
        "record_return_delivery",
        Route(("record_return_delivery",), _states(CaseState.SHIPPED_BACK), Leg.RETURN),
        Route(
            ("record_pickup", "record_return_delivery"),
            _states(CaseState.APPROVED, CaseState.PICKUP),
            Leg.RETURN,
            note="the delivery implies the pickup: both apply in one transaction",
        ),
        _ignore(
            _states(CaseState.RETURN_DELIVERED),
            "the return delivery is already recorded",
            leg=Leg.RETURN,
        ),
        _ignore(MERCHANT_HAS_RETURN, "the merchant already confirmed receipt", leg=Leg.RETURN),
        Route(("record_buyer_delivery",), _states(CaseState.SHIPPED_TO_BUYER), Leg.OUTBOUND),
        _ignore(
            _states(CaseState.DELIVERED_TO_BUYER, CaseState.EXCHANGED, CaseState.REPAIRED),
            "the delivery to the buyer is already recorded",
            leg=Leg.OUTBOUND,
        ),
        Route(("record_buyer_delivery",), leg=Leg.OUTBOUND),
    ),
    _carrier(EventType.PARCEL_LOST, "report_parcel_lost"),
    _carrier(EventType.PARCEL_DAMAGED, "report_parcel_damaged"),
    _payment(
        EventType.REFUND_SUCCEEDED,
        "confirm_refund",
        Route(("confirm_refund",), _states(CaseState.REFUNDING)),
        _ignore(
            _states(CaseState.REFUNDED),
            "the refund is already confirmed",
            when="same_refund_reference",
        ),
    ),
    _payment(
        EventType.REFUND_FAILED,
        "fail_refund",
        Route(("fail_refund",), _states(CaseState.REFUNDING)),
        _ignore(_states(CaseState.REFUND_FAILED), "this attempt's failure is already recorded"),
    ),
    _party(
        EventType.MERCHANT_APPROVED,
        "approve",
        _ignore(
            _states(CaseState.APPROVED, CaseState.PICKUP),
            "already approved (the review timer may have)",
        ),
    ),
    _party(
        EventType.MERCHANT_REJECTED,
        "reject",
        _ignore(_states(CaseState.REJECTED), "already rejected"),
    ),
    _party(
        EventType.MERCHANT_RECEIPT_CONFIRMED,
        "confirm_receipt",
        # The receipt timer takes a case past received (auto_receive deems it inspected too).
        _ignore(MERCHANT_HAS_RETURN, "receipt already confirmed (the receipt timer may have)"),
    ),
    _party(EventType.MERCHANT_INSPECTED, "inspect"),
    _party(EventType.MERCHANT_INSPECTION_FAILED, "fail_inspection"),
    _party(
        EventType.MERCHANT_REPLACEMENT_SHIPPED,
        "ship_replacement",
        _ignore(
            _states(CaseState.SHIPPED_TO_BUYER), "already shipped", when="same_outbound_parcel"
        ),
    ),
    _party(
        EventType.MERCHANT_REPAIRED_SHIPPED,
        "ship_repaired",
        _ignore(
            _states(CaseState.SHIPPED_TO_BUYER), "already shipped", when="same_outbound_parcel"
        ),
    ),
    _party(EventType.MERCHANT_CONVERTED_TO_REFUND, "convert_to_refund"),
    _party(
        EventType.BUYER_CANCELLED,
        "cancel",
        _ignore(_states(CaseState.CANCELLED), "already cancelled"),
    ),
    _party(EventType.BUYER_REVISED, "revise"),
    _party(
        EventType.BUYER_RETURN_SHIPPED,
        "ship_back",
        _ignore(
            PAST_PICKUP,
            "the carrier already reported this parcel",
            when="same_return_parcel",
        ),
    ),
    _party(
        EventType.BUYER_DELIVERY_CONFIRMED,
        "confirm_delivery",
        _ignore(
            _states(CaseState.EXCHANGED, CaseState.REPAIRED),
            "already confirmed (the confirmation timer may have)",
        ),
    ),
    _party(EventType.BUYER_BANK_ACCOUNT_PROVIDED, "provide_bank_account"),
    _party(
        EventType.BUYER_ESCALATED,
        "escalate",
        _ignore(_states(CaseState.DISPUTED), "already disputed"),
    ),
)

#: Every event type and what it does; ``docs/events.md`` is its readable form.
EVENT_RULES: dict[EventType, EventRule] = {rule.type: rule for rule in _RULES}


def _same_refund_reference(case: Case, data: dict[str, Any]) -> bool:
    reference = data.get("reference")
    return reference is None or reference == case.details.get("refund_reference")


def _same_parcel(detail: str) -> Callable[[Case, dict[str, Any]], bool]:
    def same(case: Case, data: dict[str, Any]) -> bool:
        number = data.get("tracking_no")
        return number is not None and number == case.details.get(detail)

    return same


#: Conditions named by ``Route.when``: (case, the trigger's data) -> holds.
CONDITIONS: dict[str, Callable[[Case, dict[str, Any]], bool]] = {
    "return_parcel_known": lambda case, _data: bool(case.details.get("return_tracking_no")),
    "same_refund_reference": _same_refund_reference,
    "same_return_parcel": _same_parcel("return_tracking_no"),
    "same_outbound_parcel": _same_parcel("outbound_tracking_no"),
}


class StaleEvent(AftersalesError):
    """The event is about an earlier attempt than the case's current one."""

    code = "stale_event"


@dataclass(frozen=True)
class Plan:
    """What an event does to one case: fire ``triggers`` as ``actor``, or nothing (ignored)."""

    actor: Actor
    triggers: tuple[str, ...]
    data: dict[str, Any] | None
    reason: str | None = None
    note: str = ""
    leg: Leg | None = None


def _validated(model: type[BaseModel], data: dict[str, Any]) -> Any:
    try:
        return model.model_validate(data)
    except ValidationError as error:
        raise describe_validation_error(error, "data") from None


def _carrier_action(envelope: Envelope, case: Case) -> tuple[Actor, dict[str, Any], None, Leg]:
    parsed: CarrierData = _validated(CarrierData, envelope.data)
    number = parsed.tracking_no or envelope.tracking_no
    if parsed.tracking_no and envelope.tracking_no and parsed.tracking_no != envelope.tracking_no:
        raise InvalidInput(
            f"{parsed.tracking_no} differs from the envelope's {envelope.tracking_no}",
            "data.tracking_no",
        )
    if not number:
        # An order id alone names no parcel: the order may have several, and the event would
        # move whichever case is open (a return the buyer never sent "delivered").
        raise InvalidInput(
            f"{envelope.type} names no tracking number; a parcel event must name the case's "
            "booked or recorded parcel",
            "tracking_no",
        )
    data: dict[str, Any] = {"carrier": parsed.carrier or envelope.source}
    if number:
        data["tracking_no"] = number
    if parsed.note:
        data["note"] = parsed.note
    return Actor(Role.CARRIER, envelope.source), data, None, _leg(case, number, parsed.recipient)


def _leg(case: Case, number: str, recipient: str | None) -> Leg:
    """Which leg a parcel is on: its tracking number, else the recipient, else the state.

    A number the case does not know yet can only belong to the return leg of a case whose
    pickup the carrier booked (its first scan tells the number); any other number is another
    parcel, refused.
    """
    returned = case.details.get("return_tracking_no")
    outbound = case.details.get("outbound_tracking_no")
    if number == returned:
        return Leg.RETURN
    if number == outbound:
        return Leg.OUTBOUND
    # The outbound leg's number is recorded when the merchant ships, the return leg's when the
    # buyer ships herself: an unknown number fits only the parcel of a booked pickup.
    if not returned and case.details.get("pickup") and recipient != "buyer":
        return Leg.RETURN
    known = ", ".join(
        f"{leg} {value}" for leg, value in (("return", returned), ("outbound", outbound)) if value
    )
    known = known or "no booked pickup, no recorded tracking number"
    raise InvalidInput(f"parcel {number} is not case {case.id}'s ({known})", "tracking_no")


def _payment_action(envelope: Envelope, case: Case) -> tuple[Actor, dict[str, Any], None, None]:
    parsed: PaymentData = _validated(PaymentData, envelope.data)
    key = parsed.idempotency_key
    # A result settles one attempt of one amount: without both it could settle any refund.
    if key is None:
        raise InvalidInput(
            f"{envelope.type} must name the refund attempt it settles "
            f"(case {case.id}'s is {case.refund_key or 'none'})",
            "data.idempotency_key",
        )
    if parsed.amount is None:
        raise InvalidInput(
            f"{envelope.type} must name the amount (case {case.id} refunds "
            f"{case.refund_amount} fen)",
            "data.amount",
        )
    if key != case.refund_key:
        current = f"the current one is {case.refund_key}" if case.refund_key else "it has none"
        raise StaleEvent(
            f"{envelope.type} names refund attempt {key} of case {case.id}, but {current}; "
            "a result of another attempt never applies to this one"
        )
    if parsed.amount != case.refund_amount:
        raise InvalidInput(
            f"{envelope.type} names {parsed.amount} fen but case {case.id} refunds "
            f"{case.refund_amount} fen",
            "data.amount",
        )
    if envelope.type is EventType.REFUND_SUCCEEDED:
        data: dict[str, Any] = {"reference": parsed.reference} if parsed.reference else {}
    else:
        data = {"definite": parsed.definite}
        if parsed.error:
            data["error"] = parsed.error
    return Actor(Role.PAYMENT, envelope.source), data, None, None


def _party_action(
    model: type[MerchantData] | type[BuyerData], role: Role
) -> Callable[[Envelope, Case], tuple[Actor, dict[str, Any], str | None, None]]:
    def action(envelope: Envelope, case: Case) -> tuple[Actor, dict[str, Any], str | None, None]:
        parsed = _validated(model, envelope.data)
        owner = parsed.merchant_id if isinstance(parsed, MerchantData) else parsed.buyer_id
        return Actor(role, owner), dict(parsed.model_extra or {}), parsed.reason, None

    return action


#: How an event's ``data`` becomes (actor, trigger data, reason, parcel leg).
_TRANSFORMS: dict[
    str, Callable[[Envelope, Case], tuple[Actor, dict[str, Any], str | None, Leg | None]]
] = {
    "carrier": _carrier_action,
    "payment": _payment_action,
    "merchant": _party_action(MerchantData, Role.MERCHANT),
    "buyer": _party_action(BuyerData, Role.BUYER),
}


def plan(envelope: Envelope, case: Case) -> Plan:
    """What ``envelope`` does to ``case`` now; raises the typed error that dead-letters it.

    Pure: the engine still checks the plan's triggers when they fire.
    """
    rule = EVENT_RULES[envelope.type]
    actor, data, reason, leg = _TRANSFORMS[rule.data](envelope, case)
    engine.check_owner(case, actor)
    if case.type in rule.types:
        for route in rule.routes:
            if route.states is not None and case.state not in route.states:
                continue
            if route.leg is not None and route.leg is not leg:
                continue
            if route.when is not None and not CONDITIONS[route.when](case, data):
                continue
            return Plan(actor, route.triggers, data or None, reason, route.note, leg)
    return Plan(actor, (rule.fallback,), data or None, reason, leg=leg)


# -- parsing -----------------------------------------------------------------------------------


# -- the readable mapping -------------------------------------------------------------------------

_ACTS_AS = {
    Role.CARRIER: "carrier:*source*",
    Role.PAYMENT: "payment:*source*",
    Role.MERCHANT: "merchant:*data.merchant_id*",
    Role.BUYER: "buyer:*data.buyer_id*",
}


def _where(route: Route) -> str:
    order = list(CaseState)
    states = (
        ", ".join(s.value for s in sorted(route.states, key=order.index))
        if route.states is not None
        else "any state"
    )
    leg = f" ({route.leg.value} leg)" if route.leg else ""
    when = f" if {route.when.replace('_', ' ')}" if route.when else ""
    return f"{states}{leg}{when}"


def mapping_markdown() -> str:
    """``EVENT_RULES`` as the Markdown table of docs/events.md (``aftersales events mapping``)."""
    rows = ["| event | acts as | case in | does |", "|---|---|---|---|"]
    for rule in _RULES:
        lines = []
        for route in rule.routes:
            if route.triggers:
                does = " then ".join(f"`{t}`" for t in route.triggers)
            else:
                does = f"ignored: {route.note}"
            lines.append((_where(route), does))
        other = "any other state" if rule.routes else "any state"
        excluded = sorted(t.value for t in CaseType if t not in rule.types)
        if excluded:
            other += f"; {', '.join(excluded)} cases"
        lines.append((other, f"`{rule.fallback}`, or a dead letter when the engine refuses it"))
        for index, (where, does) in enumerate(lines):
            event = f"`{rule.type.value}`" if index == 0 else ""
            actor = _ACTS_AS[rule.role] if index == 0 else ""
            rows.append(f"| {event} | {actor} | {where} | {does} |")
    rows.extend(
        f"| `{event.value}` | the order system | no case | {does} |" for event, does in _ORDER_ROWS
    )
    return "\n".join(rows) + "\n"


#: The ``order.*`` events write the order of record (``workflow.events.orders``), not a case.
_ORDER_ROWS = (
    (
        EventType.ORDER_PLACED,
        "imports `data` as the order of record (upsert by `order_id`; what was paid and "
        "ordered never changes)",
    ),
    (
        EventType.ORDER_DELIVERED,
        "sets the order's `delivered_at` (`data.delivered_at`, else `occurred_at`)",
    ),
)
