"""Send events to the after-sales service from any Python program: copy this file, or import it.

It needs only ``celery`` (``pip install celery[redis]``), never the service's own code: the
service's workers run the tasks by name. The envelope is a plain dict, documented in
docs/events.md and docs/event.schema.json::

    from producer import make_envelope, publish_event

    publish_event(
        make_envelope("sf-express", "parcel.delivered", tracking_no="SF1001", order_id="o-1"),
        broker_url="redis://127.0.0.1:6379/0",
    )

Sending is fire-and-forget: the service deduplicates on (source, event_id), so send again with
the same ``event_id`` whenever unsure whether a send got through.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from typing import Any

from celery import Celery

#: The task that ingests one envelope, its only argument.
INGEST_TASK = "aftersales.ingest_event"
#: The task that ingests a list of envelopes in order, many to a transaction (a savepoint
#: each: a refused or duplicate event has its own outcome and undoes none of the others).
INGEST_BATCH_TASK = "aftersales.ingest_events"

_apps: dict[str, Celery] = {}


def _app(broker_url: str) -> Celery:
    # One client per broker for the process: each keeps a connection pool.
    app = _apps.get(broker_url)
    if app is None:
        app = _apps[broker_url] = Celery("aftersales-producer", broker=broker_url)
    return app


def make_envelope(
    source: str,
    type: str,
    *,
    case_id: int | None = None,
    order_id: str | None = None,
    tracking_no: str | None = None,
    data: Mapping[str, Any] | None = None,
    event_id: str | None = None,
    occurred_at: datetime | None = None,
) -> dict[str, Any]:
    """An envelope with a fresh ``event_id`` and ``occurred_at`` now, unless given.

    Keep the ``event_id`` of an event you may send again: a new id makes it a new event.
    """
    moment = occurred_at or datetime.now(UTC)
    if moment.tzinfo is None:
        raise ValueError("occurred_at needs a timezone")
    envelope: dict[str, Any] = {
        "event_id": event_id or str(uuid.uuid4()),
        "source": source,
        "type": type,
        "occurred_at": moment.isoformat(),
        "data": dict(data or {}),
    }
    for key, value in (("case_id", case_id), ("order_id", order_id), ("tracking_no", tracking_no)):
        if value is not None:
            envelope[key] = value
    return envelope


def publish_event(envelope: Mapping[str, Any], broker_url: str, queue: str | None = None) -> None:
    """Queue one event for ingestion (``send_task("aftersales.ingest_event", args=[envelope])``)."""
    options = {"queue": queue} if queue else {}
    _app(broker_url).send_task(INGEST_TASK, args=[dict(envelope)], **options)


def publish_events(
    envelopes: Iterable[Mapping[str, Any]], broker_url: str, queue: str | None = None
) -> None:
    """Queue a batch of events as one message; they are applied in the given order."""
    batch = [dict(envelope) for envelope in envelopes]
    if not batch:
        return
    options = {"queue": queue} if queue else {}
    _app(broker_url).send_task(INGEST_BATCH_TASK, args=[batch], **options)
