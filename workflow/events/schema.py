"""The published JSON Schema of the envelope (docs/event.schema.json), with each type's ``data``."""

from __future__ import annotations

import json
from typing import Any

from pydantic import BaseModel

from workflow.events.envelope import (
    BuyerData,
    CarrierData,
    Envelope,
    EventType,
    MerchantData,
    OrderDeliveredData,
    PaymentData,
)
from workflow.orders import OrderIn

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
        # Nested models' definitions resolve against the document's root.
        schema.setdefault("$defs", {}).update(data.pop("$defs", {}))
        return data

    schema["allOf"] = [
        when(_CARRIER_TYPES, of(CarrierData)),
        when(_PAYMENT_TYPES, of(PaymentData)),
        when([t.value for t in EventType if t.value.startswith("merchant.")], of(MerchantData)),
        when([t.value for t in EventType if t.value.startswith("buyer.")], of(BuyerData)),
        when([EventType.ORDER_PLACED.value], of(OrderIn)),
        when([EventType.ORDER_DELIVERED.value], of(OrderDeliveredData)),
    ]
    schema["description"] = (
        "An inbound after-sales event (docs/events.md). Producers send it as the one argument "
        'of the Celery task "aftersales.ingest_event".'
    )
    return {"$schema": "https://json-schema.org/draft/2020-12/schema", **schema}


def schema_text() -> str:
    """``event_schema()`` as committed in docs/event.schema.json."""
    return json.dumps(event_schema(), indent=2, ensure_ascii=False, sort_keys=False) + "\n"
