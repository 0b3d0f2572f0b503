"""Inbound events: the envelope producers send, what each type does to a case, and ingestion.

Carriers, the payment gateway and the merchant and buyer front ends tell us what happened in one
JSON envelope (``Envelope``). ``EVENT_RULES`` maps each event type, as data, to the triggers it
fires, the actor it fires them as and how its ``data`` becomes the trigger's data; its routes say
what an event means in each state, which is where the out-of-order policy lives (docs/events.md
has the table). ``EventService`` applies an event in one transaction with the record of its
(source, event id), so a redelivery changes nothing; an event that cannot apply is kept as a
dead letter with its reason, to be listed, replayed or discarded. Nothing is dropped.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from enum import StrEnum
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from workflow import engine
from workflow.clock import Clock
from workflow.definitions import RETURN_LEG
from workflow.errors import AftersalesError, Conflict, IngestFailed, InvalidInput, NotFound
from workflow.model import Actor, Case, DeadLetter, DeadLetterStatus, cases_by_reference
from workflow.payloads import Fen, Ident, Text, describe_validation_error
from workflow.ports import UnitOfWork, UnitOfWorkFactory
from workflow.service import CaseService
from workflow.states import CaseState, CaseType, Role

S = CaseState

#: How often an event is planned and fired again when a concurrent transition moved its case
#: first; past that the ``Conflict`` propagates and the caller (a Celery task) retries later.
CONFLICT_ATTEMPTS = 3
#: Events applied per transaction by ``EventService.ingest_many``: a commit waits for the disk
#: (about 1 ms on PostgreSQL with fsync), shared by the batch; beyond about a hundred the share
#: is small beside the events' own statements (bench/ingest_batch.py), while a longer
#: transaction holds its cases' row locks longer and, on PostgreSQL, every savepoint that wrote
#: takes a subtransaction id (past 64 in one transaction, other sessions' snapshots get slower).
MAX_BATCH = 50
#: Source recorded for a dead letter whose document names no usable source.
UNKNOWN_SOURCE = "unknown"


class EventType(StrEnum):
    """What happened, past tense, prefixed by who tells us."""

    #: The carrier picked up the return parcel from the buyer.
    PARCEL_PICKED_UP = "parcel.picked_up"
    #: The carrier delivered a parcel: the return to the merchant, or a replacement/repaired
    #: item to the buyer.
    PARCEL_DELIVERED = "parcel.delivered"
    #: The carrier lost a parcel in transit.
    PARCEL_LOST = "parcel.lost"
    #: The carrier reports a parcel damaged in transit.
    PARCEL_DAMAGED = "parcel.damaged"
    #: The payment channel paid the refund.
    REFUND_SUCCEEDED = "refund.succeeded"
    #: The payment channel refused the refund, or its answer is unknown (``definite: false``).
    REFUND_FAILED = "refund.failed"
    MERCHANT_APPROVED = "merchant.approved"
    MERCHANT_REJECTED = "merchant.rejected"
    MERCHANT_RECEIPT_CONFIRMED = "merchant.receipt_confirmed"
    MERCHANT_INSPECTED = "merchant.inspected"
    MERCHANT_INSPECTION_FAILED = "merchant.inspection_failed"
    MERCHANT_REPLACEMENT_SHIPPED = "merchant.replacement_shipped"
    MERCHANT_REPAIRED_SHIPPED = "merchant.repaired_shipped"
    MERCHANT_CONVERTED_TO_REFUND = "merchant.converted_to_refund"
    BUYER_CANCELLED = "buyer.cancelled"
    BUYER_REVISED = "buyer.revised"
    BUYER_RETURN_SHIPPED = "buyer.return_shipped"
    BUYER_DELIVERY_CONFIRMED = "buyer.delivery_confirmed"
    BUYER_BANK_ACCOUNT_PROVIDED = "buyer.bank_account_provided"
    BUYER_ESCALATED = "buyer.escalated"


# -- the envelope ---------------------------------------------------------------------------------

EventId = Annotated[
    str,
    Field(
        min_length=1,
        max_length=128,
        pattern=r"^[A-Za-z0-9_.:\-]+$",
        description="Unique per source; a redelivery carries the same id.",
    ),
]


def _aware(value: datetime) -> datetime:
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError("needs a timezone offset, e.g. 2026-11-20T10:00:00+08:00")
    return value


class Envelope(BaseModel):
    """One inbound event, as every producer sends it (docs/events.md, docs/event.schema.json)."""

    model_config = ConfigDict(
        extra="forbid",
        str_strip_whitespace=True,
        title="AftersalesEvent",
        # At least one reference to the case, and not null.
        json_schema_extra={
            "anyOf": [
                {"required": [key], "properties": {key: {"not": {"type": "null"}}}}
                for key in ("case_id", "order_id", "tracking_no")
            ]
        },
    )

    event_id: EventId
    source: Ident = Field(
        description="The producer, e.g. sf-express, wechat-pay, merchant-portal; "
        "(source, event_id) identifies the event."
    )
    type: EventType
    occurred_at: datetime = Field(description="When it happened, ISO 8601 with a UTC offset.")
    case_id: Annotated[int, Field(gt=0, le=2**63 - 1, strict=True)] | None = Field(
        default=None,
        description="The case, when the producer knows it (the outbox messages carry it).",
    )
    order_id: Ident | None = Field(
        default=None, description="The order; enough when it has one open case."
    )
    tracking_no: Ident | None = Field(
        default=None, description="A parcel's tracking number (return or outbound)."
    )
    data: dict[str, Any] = Field(
        default_factory=dict, description="Type-specific fields; see docs/events.md."
    )

    _occurred_aware = field_validator("occurred_at")(_aware)

    @model_validator(mode="after")
    def _names_a_case(self) -> Envelope:
        if self.case_id is None and self.order_id is None and self.tracking_no is None:
            raise ValueError("name the case: case_id, order_id or tracking_no")
        return self


class _Data(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)


class CarrierData(_Data):
    """``data`` of the ``parcel.*`` events."""

    tracking_no: Ident | None = Field(
        default=None, description="The parcel, when the envelope's tracking_no does not name it."
    )
    carrier: Ident | None = Field(
        default=None, description="The carrier's name; defaults to the event's source."
    )
    recipient: Literal["merchant", "buyer"] | None = Field(
        default=None,
        description="Who received (or is to receive) the parcel: settles which leg it is on.",
    )
    note: Text | None = None


class PaymentData(_Data):
    """``data`` of the ``refund.*`` events."""

    idempotency_key: Ident | None = Field(
        default=None,
        description="The refund attempt's key from the refund.requested message; a result "
        "naming another attempt's key is stale and never applies to the current one.",
    )
    reference: Ident | None = Field(
        default=None, description="The channel's refund reference (refund.succeeded)."
    )
    error: Text | None = Field(default=None, description="Why it failed (refund.failed).")
    definite: bool = Field(
        default=True,
        description="refund.failed: false when the channel's answer is unknown (a timeout); "
        "the retry then reuses the attempt's key.",
    )
    amount: Fen | None = Field(
        default=None,
        description="Fen refunded (refund.succeeded); must equal the case's refund amount.",
    )


class MerchantData(BaseModel):
    """``data`` of the ``merchant.*`` events: the merchant, and the trigger's own fields."""

    model_config = ConfigDict(extra="allow", str_strip_whitespace=True)

    merchant_id: Ident = Field(description="The acting merchant; must own the case.")
    reason: Text | None = Field(
        default=None,
        description="Required by merchant.rejected and merchant.inspection_failed.",
    )


class BuyerData(BaseModel):
    """``data`` of the ``buyer.*`` events: the buyer, and the trigger's own fields."""

    model_config = ConfigDict(extra="allow", str_strip_whitespace=True)

    buyer_id: Ident = Field(description="The acting buyer; must own the case.")
    reason: Text | None = None


# -- the mapping, as data ---------------------------------------------------------------------


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
    S.RECEIVED,
    S.INSPECTED,
    S.REFUNDING,
    S.REFUND_FAILED,
    S.AWAITING_BANK_ACCOUNT,
    S.REFUNDED,
    S.SHIPPED_TO_BUYER,
    S.DELIVERED_TO_BUYER,
    S.EXCHANGED,
    S.REPAIRED,
)
#: The return parcel has left the buyer: a pickup is stale.
PAST_PICKUP = MERCHANT_HAS_RETURN | _states(S.SHIPPED_BACK, S.RETURN_DELIVERED)
#: Case types with an outbound leg (a replacement or the repaired goods).
OUTBOUND_TYPES = frozenset({CaseType.EXCHANGE, CaseType.REPAIR})
#: With no tracking number to tell, a parcel event in these states is about the outbound leg.
OUTBOUND_STATES = _states(S.SHIPPED_TO_BUYER, S.DELIVERED_TO_BUYER, S.EXCHANGED, S.REPAIRED)


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
        Route(("record_pickup",), _states(S.APPROVED, S.PICKUP), Leg.RETURN),
        _ignore(None, "an outbound pickup is informational", leg=Leg.OUTBOUND),
        _ignore(
            PAST_PICKUP, "stale: the return parcel already moved past its pickup", leg=Leg.RETURN
        ),
        _ignore(
            _states(S.DISPUTED),
            "stale: the return parcel was already on its way",
            when="return_parcel_known",
        ),
    ),
    _carrier(
        EventType.PARCEL_DELIVERED,
        "record_return_delivery",
        Route(("record_return_delivery",), _states(S.SHIPPED_BACK), Leg.RETURN),
        Route(
            ("record_pickup", "record_return_delivery"),
            _states(S.APPROVED, S.PICKUP),
            Leg.RETURN,
            note="the delivery implies the pickup: both apply in one transaction",
        ),
        _ignore(
            _states(S.RETURN_DELIVERED), "the return delivery is already recorded", leg=Leg.RETURN
        ),
        _ignore(MERCHANT_HAS_RETURN, "the merchant already confirmed receipt", leg=Leg.RETURN),
        Route(("record_buyer_delivery",), _states(S.SHIPPED_TO_BUYER), Leg.OUTBOUND),
        _ignore(
            _states(S.DELIVERED_TO_BUYER, S.EXCHANGED, S.REPAIRED),
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
        Route(("confirm_refund",), _states(S.REFUNDING)),
        _ignore(
            _states(S.REFUNDED), "the refund is already confirmed", when="same_refund_reference"
        ),
    ),
    _payment(
        EventType.REFUND_FAILED,
        "fail_refund",
        Route(("fail_refund",), _states(S.REFUNDING)),
        _ignore(_states(S.REFUND_FAILED), "this attempt's failure is already recorded"),
    ),
    _party(
        EventType.MERCHANT_APPROVED,
        "approve",
        _ignore(_states(S.APPROVED, S.PICKUP), "already approved (the review timer may have)"),
    ),
    _party(EventType.MERCHANT_REJECTED, "reject", _ignore(_states(S.REJECTED), "already rejected")),
    _party(
        EventType.MERCHANT_RECEIPT_CONFIRMED,
        "confirm_receipt",
        _ignore(_states(S.RECEIVED), "receipt already confirmed (the receipt timer may have)"),
    ),
    _party(EventType.MERCHANT_INSPECTED, "inspect"),
    _party(EventType.MERCHANT_INSPECTION_FAILED, "fail_inspection"),
    _party(
        EventType.MERCHANT_REPLACEMENT_SHIPPED,
        "ship_replacement",
        _ignore(_states(S.SHIPPED_TO_BUYER), "already shipped", when="same_outbound_parcel"),
    ),
    _party(
        EventType.MERCHANT_REPAIRED_SHIPPED,
        "ship_repaired",
        _ignore(_states(S.SHIPPED_TO_BUYER), "already shipped", when="same_outbound_parcel"),
    ),
    _party(EventType.MERCHANT_CONVERTED_TO_REFUND, "convert_to_refund"),
    _party(EventType.BUYER_CANCELLED, "cancel", _ignore(_states(S.CANCELLED), "already cancelled")),
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
            _states(S.EXCHANGED, S.REPAIRED),
            "already confirmed (the confirmation timer may have)",
        ),
    ),
    _party(EventType.BUYER_BANK_ACCOUNT_PROVIDED, "provide_bank_account"),
    _party(EventType.BUYER_ESCALATED, "escalate", _ignore(_states(S.DISPUTED), "already disputed")),
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
    data: dict[str, Any] = {"carrier": parsed.carrier or envelope.source}
    if number:
        data["tracking_no"] = number
    if parsed.note:
        data["note"] = parsed.note
    return Actor(Role.CARRIER, envelope.source), data, None, _leg(case, number, parsed.recipient)


def _leg(case: Case, number: str | None, recipient: str | None) -> Leg:
    """Which leg a parcel is on: its tracking number, else the recipient, else the state.

    A number the case does not know yet can only belong to a leg whose number is unknown; a
    number that matches neither known parcel is another parcel, refused.
    """
    returned = case.details.get("return_tracking_no")
    outbound = case.details.get("outbound_tracking_no")
    if number is not None and number == returned:
        return Leg.RETURN
    if number is not None and number == outbound:
        return Leg.OUTBOUND
    # Only exchanges and repairs send goods back out to the buyer.
    legs = [Leg.RETURN, Leg.OUTBOUND] if case.type in OUTBOUND_TYPES else [Leg.RETURN]
    candidates = legs
    if number is not None:
        known_numbers = {Leg.RETURN: returned, Leg.OUTBOUND: outbound}
        candidates = [leg for leg in legs if not known_numbers[leg]]
    wanted = {"merchant": Leg.RETURN, "buyer": Leg.OUTBOUND}.get(recipient or "")
    if wanted is not None:
        candidates = [leg for leg in candidates if leg is wanted]
    if not candidates:
        known = ", ".join(
            f"{leg} {value}"
            for leg, value in (("return", returned), ("outbound", outbound))
            if value
        )
        raise InvalidInput(f"parcel {number} is not case {case.id}'s ({known})", "tracking_no")
    if len(candidates) == 1:
        return candidates[0]
    return Leg.OUTBOUND if case.state in OUTBOUND_STATES else Leg.RETURN


def _payment_action(envelope: Envelope, case: Case) -> tuple[Actor, dict[str, Any], None, None]:
    parsed: PaymentData = _validated(PaymentData, envelope.data)
    key = parsed.idempotency_key
    if key is not None and key != case.refund_key:
        current = f"the current one is {case.refund_key}" if case.refund_key else "it has none"
        raise StaleEvent(
            f"{envelope.type} names refund attempt {key} of case {case.id}, but {current}; "
            "a result of another attempt never applies to this one"
        )
    if (
        envelope.type is EventType.REFUND_SUCCEEDED
        and parsed.amount is not None
        and parsed.amount != case.refund_amount
    ):
        raise InvalidInput(
            f"refunded {parsed.amount} fen but case {case.id} refunds {case.refund_amount} fen",
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


def parse_envelope(raw: Any) -> tuple[Envelope, dict[str, Any]]:
    """The envelope of ``raw`` (a dict, or JSON text) and the document as received."""
    document, problem = _decode(raw)
    if problem is not None:
        raise InvalidInput(problem)
    try:
        return Envelope.model_validate(document), document
    except ValidationError as error:
        raise describe_validation_error(error) from None


def as_document(raw: Any) -> dict[str, Any]:
    """``raw`` as the dict a dead letter keeps: the object itself, or ``{"raw": ...}``."""
    return _decode(raw)[0]


def _decode(raw: Any) -> tuple[dict[str, Any], str | None]:
    """(the document, why it is not a JSON object, if it is not)."""
    value = raw
    if isinstance(value, bytes | bytearray):
        value = value.decode("utf-8", errors="replace")
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError as error:
            where = f"line {error.lineno} column {error.colno}"
            return {"raw": _raw_text(raw)}, f"not valid JSON: {error.msg} at {where}"
    if isinstance(value, Mapping):
        return dict(value), None
    kind = "null" if value is None else type(value).__name__
    return {"raw": value}, f"an event is a JSON object, not {kind}"


def _raw_text(raw: Any) -> Any:
    return raw.decode("utf-8", errors="replace") if isinstance(raw, bytes | bytearray) else raw


def _identity(document: Mapping[str, Any]) -> tuple[str, str | None]:
    """(source, event id) of a document that may be malformed, for its dead letter."""
    source = document.get("source")
    event_id = document.get("event_id")
    return (
        source.strip()[:64] if isinstance(source, str) and source.strip() else UNKNOWN_SOURCE,
        event_id.strip()[:128] if isinstance(event_id, str) and event_id.strip() else None,
    )


# -- the service ----------------------------------------------------------------------------------


class IngestStatus(StrEnum):
    #: The event moved its case.
    APPLIED = "applied"
    #: (source, event_id) was processed before; nothing was written.
    DUPLICATE = "duplicate"
    #: Acknowledged and recorded without a transition (stale, or already true); see ``reason``.
    IGNORED = "ignored"
    #: Could not apply; kept as a dead letter (``letter_id``) with ``code`` and ``reason``.
    DEAD_LETTERED = "dead_lettered"


@dataclass(frozen=True)
class IngestResult:
    status: IngestStatus
    source: str
    event_id: str | None
    type: str | None = None
    case_id: int | None = None
    #: The trigger the event maps to (fired, or refused for a dead letter).
    trigger: str | None = None
    #: Triggers fired before ``trigger`` because the event implied them (a pickup).
    implied: tuple[str, ...] = ()
    #: The case's state afterwards, when known.
    state: CaseState | None = None
    reason: str | None = None
    #: The error code of a dead letter (``not_found``, ``not_allowed``, ``invalid_input``, ...).
    code: str | None = None
    letter_id: int | None = None

    def as_json(self) -> dict[str, Any]:
        return {
            "status": self.status.value,
            "source": self.source,
            "event_id": self.event_id,
            "type": self.type,
            "case_id": self.case_id,
            "trigger": self.trigger,
            "implied": list(self.implied),
            "state": self.state.value if self.state else None,
            "reason": self.reason,
            "code": self.code,
            "letter_id": self.letter_id,
        }


class _Refused(Exception):
    """An event that cannot apply, with what was known when it was refused."""

    def __init__(
        self, error: AftersalesError, case_id: int | None = None, trigger: str | None = None
    ) -> None:
        super().__init__(str(error))
        self.error, self.case_id, self.trigger = error, case_id, trigger


class _Held(Exception):
    """A batch stops at this event (a concurrent transition moved its case): the events
    before it commit, it and the rest continue outside the transaction."""


class EventService:
    """Ingests inbound events: applies, deduplicates, ignores or dead-letters each one.

    ``ingest`` never raises for a bad event (it becomes a dead letter); errors of the
    infrastructure (the database is down) propagate, so a Celery task retries the event.
    """

    def __init__(
        self,
        case_service: CaseService,
        uow_factory: UnitOfWorkFactory,
        clock: Clock,
        max_batch: int = MAX_BATCH,
    ) -> None:
        if max_batch < 1:
            raise ValueError("max_batch must be at least 1")
        self._cases = case_service
        self._uow = uow_factory
        self.clock = clock
        #: Events applied per transaction by ``ingest_many``.
        self.max_batch = max_batch

    # -- ingestion -------------------------------------------------------------------------------
    def ingest(self, raw: Any) -> IngestResult:
        """Apply one event (an envelope dict, or its JSON text) in one transaction."""
        try:
            envelope, document = parse_envelope(raw)
        except InvalidInput as error:
            return self._dead_letter(as_document(raw), _Refused(error))
        for attempt in range(1, CONFLICT_ATTEMPTS + 1):
            try:
                return self._apply_alone(envelope, document)
            except Conflict:
                # A concurrent transition moved the case between our read and our write:
                # plan again on its new state.
                if attempt == CONFLICT_ATTEMPTS:
                    raise
        raise AssertionError("unreachable")  # pragma: no cover

    def _apply_alone(self, envelope: Envelope, document: dict[str, Any]) -> IngestResult:
        with self._uow() as uow:
            try:
                result = self._apply(uow, envelope)
            except _Refused as refused:
                # Nothing of the refused event stays, not even its record: a redelivery
                # (after the case or the code was fixed) is tried again.
                uow.rollback()
                result = self._letter_in(uow, document, refused, envelope)
            uow.commit()
        if result.status is IngestStatus.APPLIED:
            self._cases.outbox_written()
        return result

    def ingest_many(self, raws: Iterable[Any]) -> list[IngestResult]:
        """Apply events in the given order, ``max_batch`` to a transaction; one outcome each.

        Each event runs in a savepoint, so a malformed, refused or duplicate one gets its own
        outcome (a dead letter, ...) without undoing the others, and each applied one is still
        its case's compare-and-set with its log, timers, outbox and dedupe record. An event
        whose case a concurrent transition moved ends the transaction there: what came before
        commits, that event is applied alone (planned again on the new state), and the rest
        continue in a new batch, so events of one case keep their order. When the transaction
        itself fails (serialization failure, deadlock, lost connection) its events are applied
        again one per transaction: the dedupe record makes any that did commit a duplicate.
        """
        pending = list(raws)
        results: list[IngestResult] = []
        while pending:
            batch, pending = pending[: self.max_batch], pending[self.max_batch :]
            done = self._ingest_batch(batch)
            results.extend(done)
            if len(done) < len(batch):
                # Stopped at an event that lost a race: alone, then the rest batch again.
                results.append(self.ingest(batch[len(done)]))
                pending = batch[len(done) + 1 :] + pending
        return results

    def _ingest_batch(self, raws: list[Any]) -> list[IngestResult]:
        """The outcomes of a prefix of ``raws`` (all of them unless one lost a race)."""
        if len(raws) == 1:
            return [self.ingest(raws[0])]
        results: list[IngestResult] = []
        parsed = [_parse(raw) for raw in raws]
        try:
            with self._uow() as uow:
                envelopes = [p[0] for p in parsed if isinstance(p, tuple)]
                reads = _BatchReads(
                    # One read for the cases the events name by id, with their live timers.
                    by_id=uow.cases.get_many([e.case_id for e in envelopes if e.case_id]),
                    # One for the events recorded before: the others are recorded as checked
                    # writes that ride with the next statement, no round trip per event. One
                    # recorded meanwhile by a concurrent delivery fails the batch's commit,
                    # and the batch goes one event per transaction (below), where it is a
                    # duplicate.
                    recorded=uow.events.recorded([(e.source, e.event_id) for e in envelopes]),
                    # One for the cases of the orders that events name without a case id (a
                    # carrier's first scan names the order and the parcel).
                    by_order=uow.cases.of_orders(
                        [e.order_id for e in envelopes if e.case_id is None and e.order_id]
                    ),
                )
                for raw, parse in zip(raws, parsed, strict=True):
                    try:
                        results.append(self._apply_in_batch(uow, raw, parse, reads))
                    except _Held:
                        break
                uow.commit()
        except Exception:
            # The batch did not commit, or we cannot know it did: one event per transaction
            # is the reference behaviour, finds what did commit a duplicate, and raises again
            # what is not a passing failure (the task then retries the whole batch).
            return [self.ingest(raw) for raw in raws]
        if any(result.status is IngestStatus.APPLIED for result in results):
            self._cases.outbox_written()
        return results

    def _apply_in_batch(
        self,
        uow: UnitOfWork,
        raw: Any,
        parsed: tuple[Envelope, dict[str, Any]] | InvalidInput,
        reads: _BatchReads,
    ) -> IngestResult:
        if isinstance(parsed, InvalidInput):
            return self._letter_in(uow, as_document(raw), _Refused(parsed))
        envelope, document = parsed
        try:
            with uow.savepoint():
                result = self._apply(uow, envelope, reads)
            # Recorded now (unless a duplicate): a copy later in the batch is a duplicate.
            reads.recorded.add((envelope.source, envelope.event_id))
            return result
        except _Refused as refused:
            return self._letter_in(uow, document, refused, envelope)
        except Conflict:
            raise _Held() from None

    def _apply(
        self,
        uow: UnitOfWork,
        envelope: Envelope,
        reads: _BatchReads | None = None,
    ) -> IngestResult:
        """Resolve, record, plan and fire ``envelope`` in ``uow``; the caller commits.
        ``reads``: what a batch read at its start in ``uow`` (cases, recorded events), used
        instead of reading again.

        Raises ``_Refused`` for an event that cannot apply (the caller rolls back what this
        wrote and keeps a dead letter instead) and ``Conflict`` when a concurrent transition
        moved the case between our read and our write.
        """
        source, event_id = envelope.source, envelope.event_id
        now = self.clock.now()
        # The record comes first: a redelivered event is a duplicate whatever happened to its
        # case since. It commits with the transition (or the acknowledgement) it led to; on
        # PostgreSQL a concurrent delivery of the same event waits on it, then sees it.
        recorded: bool | None = None
        named = reads.by_id if reads is not None else None
        named_id = envelope.case_id
        if named_id is not None and not (named and named_id in named):
            # The record and the read of the case the event names (one statement where the
            # store can: ``EventStore.record``). When the event is refused below, the record
            # goes with the rollback, as it always did.
            recorded = uow.events.record(source, event_id, named_id, now)
            read = uow.cases.get(named_id)
            named = {named_id: read} if read is not None else None
        try:
            case = _resolve(uow, envelope, named, reads.by_order if reads is not None else None)
        except Conflict:
            # An earlier write of the batch lost its race and surfaced at this read.
            raise
        except AftersalesError as error:
            if recorded is None:
                recorded = uow.events.record(source, event_id, None, now)
            if not recorded:
                return self._result(envelope, IngestStatus.DUPLICATE)
            raise _Refused(error) from None
        assert case.id is not None
        if reads is not None:
            # This case is about to change: no later event of the batch may use a copy of it.
            reads.spend(case)
        if recorded is None:
            recorded = _record(uow, envelope, case.id, now, reads)
        if not recorded:
            return self._result(envelope, IngestStatus.DUPLICATE, case)
        try:
            decided = plan(envelope, case)
        except AftersalesError as error:
            raise _Refused(error, case.id, EVENT_RULES[envelope.type].fallback) from None
        if not decided.triggers:
            reason = f"{decided.note} (case {case.id} is {case.state.value})"
            return self._result(envelope, IngestStatus.IGNORED, case, reason=reason)
        first, *then = decided.triggers
        trigger, implied = decided.triggers[-1], decided.triggers[:-1]
        try:
            # The case as read above, in this transaction: its version is what the write
            # compares, so a case moved since is a Conflict, planned again by the caller.
            fired = self._cases.transition(
                uow,
                case,
                first,
                decided.actor,
                decided.data,
                decided.reason,
                idempotency_key=f"event:{source}:{event_id}",
                then=then,
            )
        except Conflict:
            raise  # not the event's fault
        except AftersalesError as error:
            raise _Refused(error, case.id, trigger) from None
        return IngestResult(
            IngestStatus.APPLIED,
            source,
            event_id,
            envelope.type.value,
            case.id,
            trigger,
            implied,
            fired.case.state,
            decided.note or None,
        )

    def _result(
        self,
        envelope: Envelope,
        status: IngestStatus,
        case: Case | None = None,
        reason: str | None = None,
    ) -> IngestResult:
        if status is IngestStatus.DUPLICATE and reason is None:
            reason = f"event {envelope.event_id} from {envelope.source} was processed before"
        return IngestResult(
            status,
            envelope.source,
            envelope.event_id,
            envelope.type.value,
            case.id if case else None,
            state=case.state if case else None,
            reason=reason,
        )

    def _dead_letter(
        self, document: dict[str, Any], refused: _Refused, envelope: Envelope | None = None
    ) -> IngestResult:
        with self._uow() as uow:
            result = self._letter_in(uow, document, refused, envelope)
            uow.commit()
        return result

    def _letter_in(
        self,
        uow: UnitOfWork,
        document: dict[str, Any],
        refused: _Refused,
        envelope: Envelope | None = None,
    ) -> IngestResult:
        """Keep the refused event as a dead letter in ``uow``; the caller commits."""
        source, event_id = (envelope.source, envelope.event_id) if envelope else _identity(document)
        reason = str(refused.error)
        letter = DeadLetter(
            source, event_id, document, reason, refused.error.code, self.clock.now()
        )
        letter_id = uow.events.dead_letter(letter)
        return IngestResult(
            IngestStatus.DEAD_LETTERED,
            source,
            event_id,
            envelope.type.value if envelope else _text(document.get("type")),
            refused.case_id,
            refused.trigger,
            reason=reason,
            code=refused.error.code,
            letter_id=letter_id,
        )

    def keep_failed(self, raws: Sequence[Any], error: str) -> list[IngestResult]:
        """Keep events whose ingestion failed for a reason that is ours, not the event's (a
        bug, a failure that outlasted every retry) as dead letters with code
        ``ingest_failed``: visible, and replayable once fixed, instead of dropped with the
        message. Events that did apply are left alone (the dedupe record tells)."""
        results = []
        for raw in raws:
            document = as_document(raw)
            source, event_id = _identity(document)
            if event_id is not None:
                with self._uow() as uow:
                    # Rolled back: only asks whether the event's record exists.
                    if not uow.events.record(source, event_id, None, self.clock.now()):
                        continue
            results.append(self._dead_letter(document, _Refused(IngestFailed(error))))
        return results

    # -- dead letters ----------------------------------------------------------------------------
    def known(self, ids: Sequence[tuple[str, str]]) -> set[tuple[str, str]]:
        """Which of these (source, event_id) the service has processed: applied, ignored,
        duplicate or dead-lettered; the others never arrived (or not yet)."""
        if not ids:
            return set()
        with self._uow() as uow:
            return uow.events.known(ids)

    def dead_letters(
        self,
        status: DeadLetterStatus | None = DeadLetterStatus.OPEN,
        after_id: int | None = None,
        limit: int = 50,
    ) -> list[DeadLetter]:
        """Dead letters by id; ``status`` None lists all; ``after_id`` pages."""
        with self._uow() as uow:
            return uow.events.dead_letters(status, after_id, limit)

    def dead_letter(self, letter_id: int) -> DeadLetter:
        with self._uow() as uow:
            return _letter(uow, letter_id)

    def replay(self, letter_id: int) -> IngestResult:
        """Ingest an open dead letter's envelope again (after the case or the code was fixed).

        When it now applies, is ignored, or turns out processed meanwhile (a redelivery got
        through), the letter is marked replayed. When it still fails, the letter stays open
        with one more attempt and the new reason.
        """
        letter = self.dead_letter(letter_id)
        if letter.status is not DeadLetterStatus.OPEN:
            raise InvalidInput(
                f"dead letter {letter_id} is {letter.status.value}; only open letters replay",
                "letter",
            )
        try:
            envelope, _document = parse_envelope(letter.envelope)
        except InvalidInput as error:
            # No valid envelope: it can never apply as it stands, and without an event id a new
            # dead letter would not find this one to count the attempt on.
            raise InvalidInput(
                f"dead letter {letter_id} is still malformed ({error}); discard it"
            ) from None
        if (envelope.source, envelope.event_id) != (letter.source, letter.event_id):
            raise InvalidInput(f"dead letter {letter_id} does not match its envelope's id")
        result = self.ingest(letter.envelope)
        if result.status is IngestStatus.DEAD_LETTERED:
            return result
        with self._uow() as uow:
            uow.events.resolve_dead_letter(letter_id, DeadLetterStatus.REPLAYED, self.clock.now())
            uow.commit()
        return _with_letter(result, letter_id)

    def discard(self, letter_id: int) -> DeadLetter:
        """Set an open dead letter aside: looked at, will not apply."""
        with self._uow() as uow:
            letter = _letter(uow, letter_id)
            if letter.status is not DeadLetterStatus.OPEN:
                raise InvalidInput(
                    f"dead letter {letter_id} is {letter.status.value}, not open", "letter"
                )
            now = self.clock.now()
            uow.events.resolve_dead_letter(letter_id, DeadLetterStatus.DISCARDED, now)
            uow.commit()
        letter.status, letter.resolved_at = DeadLetterStatus.DISCARDED, now
        return letter


def _letter(uow: UnitOfWork, letter_id: int) -> DeadLetter:
    letter = uow.events.get_dead_letter(letter_id)
    if letter is None:
        raise NotFound(f"no dead letter {letter_id}")
    return letter


def _with_letter(result: IngestResult, letter_id: int) -> IngestResult:
    return replace(result, letter_id=letter_id)


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) else None


def _record(
    uow: UnitOfWork,
    envelope: Envelope,
    case_id: int,
    now: datetime,
    reads: _BatchReads | None,
) -> bool:
    """Record the event for its case; False if it was recorded before. In a batch (which read
    the recorded events at its start) a new one is a checked write with no answer to wait for
    (the store knows it read the event as not recorded: ``EventStore.record``)."""
    key = (envelope.source, envelope.event_id)
    if reads is not None and key in reads.recorded:
        return False
    return uow.events.record(*key, case_id, now)


def _parse(raw: Any) -> tuple[Envelope, dict[str, Any]] | InvalidInput:
    try:
        return parse_envelope(raw)
    except InvalidInput as error:
        return error


@dataclass
class _BatchReads:
    """What a batch read at its start, in its transaction. A copy of a case serves the batch's
    events until one of them uses that case (or, for ``by_order``, any case of that order):
    from then on it may be stale (a pickup sets a tracking number, an ending closes the case),
    and later events read the database, where they see the batch's writes."""

    #: The cases the events name by id, with their live timers.
    by_id: dict[int, Case]
    #: The events recorded before the batch, and then the batch's own.
    recorded: set[tuple[str, str]]
    #: Every case of the orders the events name without a case id, with their live timers.
    by_order: dict[str, list[Case]]

    def spend(self, case: Case) -> None:
        if case.id is not None:
            self.by_id.pop(case.id, None)
        self.by_order.pop(case.order_id, None)


def _resolve(
    uow: UnitOfWork,
    envelope: Envelope,
    named: dict[int, Case] | None = None,
    by_order: dict[str, list[Case]] | None = None,
) -> Case:
    """The one case the envelope names: by id, else by parcel, else the order's open case.
    ``named`` (cases by id) and ``by_order`` (the cases of orders): copies read before in
    ``uow``, used instead of the database."""
    copies = by_order.get(envelope.order_id) if by_order and envelope.order_id else None

    def by_reference(order_id: str | None, tracking_no: str | None = None) -> list[Case]:
        if copies is not None:
            return cases_by_reference(copies, order_id, tracking_no)
        return uow.cases.by_reference(order_id=order_id, tracking_no=tracking_no)

    if envelope.case_id is not None:
        case = named.get(envelope.case_id) if named else None
        if case is None:
            case = uow.cases.get(envelope.case_id)
        if case is None:
            raise NotFound(f"no case {envelope.case_id}")
        if envelope.order_id is not None and envelope.order_id != case.order_id:
            raise InvalidInput(
                f"case {case.id} is of order {case.order_id}, not {envelope.order_id}", "order_id"
            )
        return case
    if envelope.tracking_no is not None:
        found = by_reference(envelope.order_id, envelope.tracking_no)
        if len(found) == 1:
            return found[0]
        if len(found) > 1:
            ids = ", ".join(str(c.id) for c in found)
            raise InvalidInput(
                f"parcel {envelope.tracking_no} belongs to cases {ids}; name the case_id",
                "tracking_no",
            )
        if envelope.order_id is None:
            raise NotFound(
                f"no case has parcel {envelope.tracking_no}; send the order_id or case_id with "
                "a parcel's first event"
            )
    assert envelope.order_id is not None
    found = by_reference(envelope.order_id)
    if not found:
        raise NotFound(f"order {envelope.order_id} has no open case")
    if len(found) > 1:
        ids = ", ".join(str(c.id) for c in found)
        raise InvalidInput(
            f"order {envelope.order_id} has open cases {ids}; name the case_id or tracking_no",
            "order_id",
        )
    return found[0]


# -- the published schema -------------------------------------------------------------------------

_CARRIER_TYPES = [t.value for t in EventType if t.value.startswith("parcel.")]
_PAYMENT_TYPES = [t.value for t in EventType if t.value.startswith("refund.")]


def event_schema() -> dict[str, Any]:
    """The JSON Schema of the envelope (docs/event.schema.json), with each type's ``data``."""
    schema = Envelope.model_json_schema()

    def when(types: list[str], data: dict[str, Any]) -> dict[str, Any]:
        return {
            "if": {"properties": {"type": {"enum": types}}, "required": ["type"]},
            "then": {"properties": {"data": data}},
        }

    def of(model: type[BaseModel]) -> dict[str, Any]:
        data = model.model_json_schema()
        data.pop("title", None)
        return data

    schema["allOf"] = [
        when(_CARRIER_TYPES, of(CarrierData)),
        when(_PAYMENT_TYPES, of(PaymentData)),
        when([t.value for t in EventType if t.value.startswith("merchant.")], of(MerchantData)),
        when([t.value for t in EventType if t.value.startswith("buyer.")], of(BuyerData)),
    ]
    schema["description"] = (
        "An inbound after-sales event (docs/events.md). Producers send it as the one argument "
        'of the Celery task "aftersales.ingest_event".'
    )
    return {"$schema": "https://json-schema.org/draft/2020-12/schema", **schema}


def schema_text() -> str:
    """``event_schema()`` as committed in docs/event.schema.json."""
    return json.dumps(event_schema(), indent=2, ensure_ascii=False, sort_keys=False) + "\n"


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
    return "\n".join(rows) + "\n"
