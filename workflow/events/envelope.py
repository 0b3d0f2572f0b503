"""The envelope every producer sends, with each event type's ``data``, and how raw input parses."""

from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import datetime
from enum import StrEnum
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from workflow.errors import InvalidInput
from workflow.payloads import Fen, Ident, Text, describe_validation_error

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
    #: The order system placed (or re-sends) an order: ``data`` is the order document, imported
    #: as an order of record (upserted by its order_id).
    ORDER_PLACED = "order.placed"
    #: The order's goods were delivered to the buyer (签收): sets the order's delivery time.
    ORDER_DELIVERED = "order.delivered"


#: The types about an order of record, not a case: applied to the order, never to a case.
ORDER_EVENT_TYPES = frozenset({EventType.ORDER_PLACED, EventType.ORDER_DELIVERED})


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
        default=None,
        description="The order; enough when it has one open case. Required by order.* "
        "events, whose order it is.",
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
        if self.type in ORDER_EVENT_TYPES:
            if self.order_id is None or self.case_id is not None or self.tracking_no is not None:
                raise ValueError(f"{self.type} names its order by order_id, and no case")
            return self
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


class OrderDeliveredData(_Data):
    """``data`` of ``order.delivered``."""

    delivered_at: datetime | None = Field(
        default=None,
        description="When the buyer signed for the goods (ISO 8601 with a UTC offset); "
        "defaults to the event's occurred_at.",
    )

    @field_validator("delivered_at")
    @classmethod
    def _delivered_aware(cls, value: datetime | None) -> datetime | None:
        return value if value is None else _aware(value)


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


def source_and_event_id(document: Mapping[str, Any]) -> tuple[str, str | None]:
    """(source, event id) of a document that may be malformed, for its dead letter."""
    source = document.get("source")
    event_id = document.get("event_id")
    return (
        source.strip()[:64] if isinstance(source, str) and source.strip() else UNKNOWN_SOURCE,
        event_id.strip()[:128] if isinstance(event_id, str) and event_id.strip() else None,
    )


# -- the service ----------------------------------------------------------------------------------
