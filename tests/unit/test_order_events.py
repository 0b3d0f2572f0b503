"""The order system's events: ``order.placed`` imports an order of record, ``order.delivered``
sets its delivery time; each once (deduplicated), refusals as dead letters, no case moved."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime
from typing import Any

import pytest

from workflow.clock import FakeClock
from workflow.events.ingestion import EventService, IngestStatus
from workflow.memory import InMemoryUnitOfWorkFactory
from workflow.orders import Order
from workflow.service import CaseService

_ids = itertools.count(1)


def order_document(order_id: str = "o-7", **overrides: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "order_id": order_id,
        "buyer_id": "b1",
        "merchant_id": "m1",
        "payment": {
            "channel": "wechat_pay",
            "amount": 39800,
            "paid_at": "2026-11-15T10:00:00+08:00",
        },
        "lines": [{"sku": "shirt", "quantity": 2, "unit_price": 19900, "category": "clothing"}],
        "gifts": [],
    }
    return {**base, **overrides}


def order_event(type_: str, order_id: str = "o-7", **fields: Any) -> dict[str, Any]:
    envelope: dict[str, Any] = {
        "event_id": f"os-{next(_ids)}",
        "source": "order-system",
        "type": type_,
        "occurred_at": "2026-11-18T15:00:00+08:00",
        "order_id": order_id,
        "data": {},
    }
    envelope.update(fields)
    return envelope


@pytest.fixture
def events(
    service: CaseService, uow_factory: InMemoryUnitOfWorkFactory, clock: FakeClock
) -> EventService:
    return EventService(service, uow_factory, clock)


def stored(uow_factory: InMemoryUnitOfWorkFactory, order_id: str) -> Order | None:
    with uow_factory() as uow:
        return uow.orders.get(order_id)


def test_order_placed_imports_the_order_once(
    events: EventService, uow_factory: InMemoryUnitOfWorkFactory
) -> None:
    # given an order.placed event carrying an order document
    placed = order_event("order.placed", data=order_document())
    # when it is delivered twice
    first = events.ingest(placed)
    again = events.ingest(placed)
    # then the order of record exists, and the redelivery is a duplicate
    assert first.status is IngestStatus.APPLIED, first.reason
    assert first.case_id is None and "imported" in (first.reason or "")
    assert again.status is IngestStatus.DUPLICATE
    order = stored(uow_factory, "o-7")
    assert order is not None and order.payment.amount == 39800 and order.delivered_at is None


def test_order_delivered_sets_the_delivery_time_from_the_event(
    events: EventService, uow_factory: InMemoryUnitOfWorkFactory
) -> None:
    # given a placed order
    events.ingest(order_event("order.placed", data=order_document()))
    # when the order system says it was delivered
    result = events.ingest(order_event("order.delivered"))
    # then the order's delivery time is the event's
    assert result.status is IngestStatus.APPLIED, result.reason
    order = stored(uow_factory, "o-7")
    assert order is not None
    assert order.delivered_at == datetime(2026, 11, 18, 7, 0, tzinfo=UTC)


def test_a_recorded_delivery_time_does_not_move(events: EventService) -> None:
    # given a delivered order
    events.ingest(order_event("order.placed", data=order_document()))
    events.ingest(order_event("order.delivered"))
    # when another delivery time arrives
    later = {"delivered_at": "2026-11-19T15:00:00+08:00"}
    result = events.ingest(order_event("order.delivered", data=later))
    # then it is a dead letter naming the field
    assert result.status is IngestStatus.DEAD_LETTERED
    assert "delivered_at" in (result.reason or "")


@pytest.mark.parametrize(
    ("event", "code"),
    [
        (order_event("order.delivered", order_id="o-404"), "not_found"),
        (
            order_event(
                "order.placed",
                data=order_document(
                    lines=[{"sku": "x", "quantity": 1, "unit_price": 1, "category": "rocks"}]
                ),
            ),
            "invalid_input",
        ),
        (order_event("order.placed", order_id="o-8", data=order_document()), "invalid_input"),
    ],
    ids=["delivered-unknown-order", "unknown-category", "other-order-id"],
)
def test_an_order_event_that_cannot_apply_is_a_dead_letter(
    events: EventService,
    uow_factory: InMemoryUnitOfWorkFactory,
    event: dict[str, Any],
    code: str,
) -> None:
    # when an order event that cannot apply arrives
    result = events.ingest(event)
    # then it is kept as a dead letter with its code, and no order is written
    assert result.status is IngestStatus.DEAD_LETTERED
    assert result.code == code, result.reason
    assert stored(uow_factory, event["order_id"]) is None


def test_a_placed_order_whose_price_changes_is_refused(events: EventService) -> None:
    # given a placed order
    events.ingest(order_event("order.placed", data=order_document()))
    # when it is placed again with another price
    cheaper = [{"sku": "shirt", "quantity": 2, "unit_price": 1, "category": "clothing"}]
    result = events.ingest(order_event("order.placed", data=order_document(lines=cheaper)))
    # then the change is a dead letter
    assert result.status is IngestStatus.DEAD_LETTERED
    assert "lines" in (result.reason or "")


def test_order_events_apply_in_a_batch_with_case_events(
    events: EventService, uow_factory: InMemoryUnitOfWorkFactory
) -> None:
    # given a batch that places an order, delivers it and places it again
    placed = order_event("order.placed", data=order_document())
    batch = [placed, order_event("order.delivered"), placed]
    # when it is ingested as one batch
    results = events.ingest_many(batch)
    # then the order is imported and delivered, and the repeat is a duplicate
    assert [r.status for r in results] == [
        IngestStatus.APPLIED,
        IngestStatus.APPLIED,
        IngestStatus.DUPLICATE,
    ]
    order = stored(uow_factory, "o-7")
    assert order is not None and order.delivered_at is not None


@pytest.mark.parametrize(
    "fields", [{"case_id": 1}, {"tracking_no": "SF1"}, {"order_id": None}], ids=str
)
def test_an_order_event_names_only_its_order(events: EventService, fields: dict[str, Any]) -> None:
    # when an order event names a case or a parcel, or no order
    result = events.ingest(order_event("order.delivered", **fields))
    # then the envelope is malformed: a dead letter
    assert result.status is IngestStatus.DEAD_LETTERED
    assert result.code == "invalid_input"
