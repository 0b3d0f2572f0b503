"""Send events to the after-sales service from any Python program: copy this file, or import it.

It needs only ``celery`` (``pip install celery[redis]``), never the service's code: the workers
run the tasks by name. The envelope is a plain dict (docs/events.md, docs/event.schema.json)::

    publish_event(
        make_envelope("sf-express", "parcel.delivered", tracking_no="SF1001", order_id="o-1"),
        broker_url="redis://127.0.0.1:6379/0",
    )

Over Redis each event first goes to a ledger of unconfirmed events that the service's beat
sends again until the event is processed (docs/events.md, docs/adr/0004); ``keep=False`` skips
it. Over RabbitMQ (``amqp://``) each publish waits for the server's confirm instead: once it
returns, RabbitMQ has the event, and it keeps it until a worker acknowledges it. Other brokers
have neither: send again with the same ``event_id`` when unsure.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlparse

from celery import Celery

#: The task that ingests one envelope, its only argument.
INGEST_TASK = "aftersales.ingest_event"
#: The task that ingests a list of envelopes in order, many to a transaction (a savepoint
#: each: a refused or duplicate event has its own outcome and undoes none of the others).
INGEST_BATCH_TASK = "aftersales.ingest_events"

#: The ledger of unconfirmed events (Redis, under the broker's key prefix): a sorted set of
#: ``unconfirmed_member(source, event_id)`` scored by when to look at the event again (first: the
#: time it was sent), and a hash from the same member to ``{"envelope": ..., "resends": n}``.
UNCONFIRMED_KEY = "aftersales:unconfirmed_events"
UNCONFIRMED_ENVELOPES_KEY = "aftersales:unconfirmed_envelopes"

_apps: dict[tuple[str, str], Celery] = {}
_unconfirmed_clients: dict[str, Any] = {}


def _app(broker_url: str, key_prefix: str = "") -> Celery:
    # One client per broker for the process: each keeps a connection pool.
    app = _apps.get((broker_url, key_prefix))
    if app is None:
        app = Celery("aftersales-producer", broker=broker_url)
        if key_prefix:
            app.conf.broker_transport_options = {"global_keyprefix": key_prefix}
        if urlparse(broker_url).scheme in ("amqp", "amqps", "pyamqp"):
            # RabbitMQ: each publish waits for the server's confirm (publisher confirms), so a
            # return means RabbitMQ has the event; a message it lost or refused raises instead.
            app.conf.broker_transport_options = {"confirm_publish": True}
        _apps[(broker_url, key_prefix)] = app
    return app


def unconfirmed_member(source: str, event_id: str) -> str:
    """The ledger's name for an event: its dedupe key as JSON, unambiguous whatever it holds."""
    return json.dumps([source, event_id])


def _keep(envelopes: list[dict[str, Any]], broker_url: str, key_prefix: str) -> None:
    """Write the envelopes to the ledger, in one transaction (one round trip)."""
    if urlparse(broker_url).scheme not in ("redis", "rediss"):
        return
    kept: dict[Any, Any] = {
        unconfirmed_member(e["source"], e["event_id"]): json.dumps({"envelope": e, "resends": 0})
        for e in envelopes
        if isinstance(e.get("source"), str) and isinstance(e.get("event_id"), str)
    }
    if not kept:
        return  # without (source, event_id) the service cannot tell whether it arrived
    client = _unconfirmed_clients.get(broker_url)
    if client is None:
        import redis  # celery[redis]'s own client: imported only by producers that use Redis

        client = _unconfirmed_clients[broker_url] = redis.Redis.from_url(broker_url)
    now = time.time()
    pipe = client.pipeline(transaction=True)
    pipe.zadd(key_prefix + UNCONFIRMED_KEY, dict.fromkeys(kept, now))
    pipe.hset(key_prefix + UNCONFIRMED_ENVELOPES_KEY, mapping=kept)
    pipe.execute()


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


def publish_event(
    envelope: Mapping[str, Any],
    broker_url: str,
    queue: str | None = None,
    *,
    key_prefix: str = "",
    keep: bool = True,
) -> None:
    """Queue one event for ingestion (``send_task("aftersales.ingest_event", args=[envelope])``).

    ``key_prefix`` is the service's ``AFTERSALES_BROKER_KEY_PREFIX``. Over Redis the event is
    first kept in the ledger (unless ``keep=False``): once this returns, or raises after that
    write, the service applies the event even if the message is lost.
    """
    event = dict(envelope)
    if keep:
        _keep([event], broker_url, key_prefix)
    options = {"queue": queue} if queue else {}
    _app(broker_url, key_prefix).send_task(INGEST_TASK, args=[event], **options)


def publish_events(
    envelopes: Iterable[Mapping[str, Any]],
    broker_url: str,
    queue: str | None = None,
    *,
    key_prefix: str = "",
    keep: bool = True,
) -> None:
    """Queue a batch of events as one message; they are applied in the given order. Kept in
    the ledger as ``publish_event`` keeps one (an event sent again goes alone)."""
    batch = [dict(envelope) for envelope in envelopes]
    if not batch:
        return
    if keep:
        _keep(batch, broker_url, key_prefix)
    options = {"queue": queue} if queue else {}
    _app(broker_url, key_prefix).send_task(INGEST_BATCH_TASK, args=[batch], **options)
