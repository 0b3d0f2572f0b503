"""The order system's events (``order.*``): they write orders of record, never a case.

``order.placed`` carries an order document and imports it (upserted by order_id, as
``aftersales orders import`` and ``POST /orders`` do); ``order.delivered`` records when the buyer
signed for the goods. Both apply under the order's lock, in the transaction that records the
event, so a redelivery is a duplicate and a refusal (an unknown category, a changed price, a
delivery time that moves) is a dead letter with its reason.
"""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime
from typing import Any

from pydantic import ValidationError

from config.policy import Policy
from workflow.clock import ensure_utc
from workflow.errors import InvalidInput, NotFound
from workflow.events.envelope import Envelope, EventType, OrderDeliveredData
from workflow.orders import merge_import, parse_order
from workflow.payloads import describe_validation_error
from workflow.ports import UnitOfWork


def apply_order_event(uow: UnitOfWork, envelope: Envelope, policy: Policy, now: datetime) -> str:
    """Apply an ``order.*`` event in ``uow`` (the caller commits); returns what it did, in
    words. Raises ``InvalidInput`` or ``NotFound`` for an event that cannot apply."""
    order_id = envelope.order_id
    assert order_id is not None  # the envelope requires it of order.* events
    if envelope.type is EventType.ORDER_PLACED:
        return _placed(uow, order_id, envelope.data, policy, now)
    return _delivered(uow, order_id, envelope, now)


def _placed(
    uow: UnitOfWork, order_id: str, data: dict[str, Any], policy: Policy, now: datetime
) -> str:
    named = data.get("order_id", order_id)
    if named != order_id:
        raise InvalidInput(
            f"{named} differs from the envelope's order_id {order_id}", "data.order_id"
        )
    try:
        incoming = parse_order({**data, "order_id": order_id}, policy)
    except InvalidInput as error:
        raise InvalidInput(str(error), "data") from None
    stored = uow.orders.lock(order_id)
    merged = merge_import(stored, incoming)
    if merged is None:
        return f"order {order_id} is already imported as sent"
    uow.orders.put(merged, now)
    return f"order {order_id} {'imported' if stored is None else 'updated'}"


def _delivered(uow: UnitOfWork, order_id: str, envelope: Envelope, now: datetime) -> str:
    try:
        parsed = OrderDeliveredData.model_validate(envelope.data)
    except ValidationError as error:
        raise describe_validation_error(error, "data") from None
    delivered_at = ensure_utc(parsed.delivered_at or envelope.occurred_at)
    stored = uow.orders.lock(order_id)
    if stored is None:
        raise NotFound(f"no order {order_id}: import it (order.placed) before its delivery")
    merged = merge_import(stored, replace(stored, delivered_at=delivered_at))
    if merged is None:
        return f"order {order_id}'s delivery is already recorded"
    uow.orders.put(merged, now)
    return f"order {order_id} delivered at {delivered_at.isoformat()}"
