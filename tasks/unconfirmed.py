"""The ledger of unconfirmed events in Redis, and the beat task that sends lost events again.

``tasks/producer.py`` writes the ledger (its keys and layout are defined there, since
producers copy that file alone); ``workflow.unconfirmed.EventResender`` decides what leaves it
and what is sent again. Only a Redis broker has a ledger: beat schedules the task only then.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from typing import Any

import redis
from celery import current_app, shared_task

from config.settings import Settings
from tasks.broker import broker_config
from tasks.producer import INGEST_TASK, UNCONFIRMED_ENVELOPES_KEY, UNCONFIRMED_KEY
from tasks.runtime import runtime
from tasks.settings import WorkerSettings
from workflow.unconfirmed import EventResender, Unconfirmed

logger = logging.getLogger(__name__)

RESEND_TASK = "aftersales.resend_unconfirmed_events"

# Only entries still in the ledger, atomically: one confirmed (forgotten) by another run
# meanwhile is not brought back. ARGV: member, score, record, member, ...
_POSTPONE = """
for i = 1, #ARGV, 3 do
  if redis.call('ZSCORE', KEYS[1], ARGV[i]) then
    redis.call('ZADD', KEYS[1], ARGV[i + 1], ARGV[i])
    redis.call('HSET', KEYS[2], ARGV[i], ARGV[i + 2])
  end
end
return 0
"""


class RedisUnconfirmedEvents:
    """``workflow.unconfirmed.UnconfirmedEvents`` on the broker's Redis, under its key prefix."""

    def __init__(self, client: redis.Redis, key_prefix: str = "") -> None:
        self._client = client
        self._scores = key_prefix + UNCONFIRMED_KEY
        self._envelopes = key_prefix + UNCONFIRMED_ENVELOPES_KEY
        self._postpone = client.register_script(_POSTPONE)

    def due(self, before: float, limit: int) -> list[Unconfirmed]:
        found = self._client.zrangebyscore(self._scores, "-inf", before, start=0, num=limit)
        members = [m.decode() if isinstance(m, bytes) else str(m) for m in found]
        if not members:
            return []
        stored = self._client.hmget(self._envelopes, members)
        return [_entry(member, raw) for member, raw in zip(members, stored, strict=True)]

    def forget(self, members: Sequence[str]) -> None:
        if not members:
            return
        pipe = self._client.pipeline(transaction=True)
        pipe.zrem(self._scores, *members)
        pipe.hdel(self._envelopes, *members)
        pipe.execute()

    def postpone(self, entries: Sequence[Unconfirmed], until: Sequence[float]) -> None:
        if not entries:
            return
        args: list[Any] = []
        for entry, at in zip(entries, until, strict=True):
            record = json.dumps({"envelope": entry.envelope, "resends": entry.resends})
            args += [entry.member, at, record]
        self._postpone(keys=[self._scores, self._envelopes], args=args)

    def size(self) -> int:
        return int(self._client.zcard(self._scores))

    def count_due(self, before: float) -> int:
        return int(self._client.zcount(self._scores, "-inf", before))


def ledger_for(settings: Settings, worker: WorkerSettings) -> RedisUnconfirmedEvents | None:
    """The ledger on the broker of ``settings``; None unless it is Redis."""
    broker = broker_config(settings.broker_url, settings.database_url, worker)
    if not broker.is_redis:
        return None
    return RedisUnconfirmedEvents(redis.Redis.from_url(broker.url), worker.broker_key_prefix)


def _entry(member: str, raw: bytes | str | None) -> Unconfirmed:
    try:
        record: Any = json.loads(raw) if raw is not None else None
        envelope = record["envelope"] if isinstance(record, dict) else None
        resends = int(record.get("resends", 0)) if isinstance(record, dict) else 0
    except (ValueError, TypeError):
        return Unconfirmed(member, None, 0)
    return Unconfirmed(member, envelope if isinstance(envelope, dict) else None, resends)


def _send(envelope: dict[str, Any]) -> None:
    current_app.send_task(INGEST_TASK, args=[envelope])


@shared_task(name=RESEND_TASK, bind=True, ignore_result=True)
def resend_unconfirmed_events_task(self: Any) -> int:
    services = runtime()
    if services.unconfirmed is None:
        return 0
    resender = EventResender(
        services.unconfirmed, services.events, _send, services.worker.event_resend_after_s
    )
    report = resender.run()
    if report.resent or report.dropped:
        logger.warning(
            "events not processed %.0f s after they were sent: %d sent again, %d unreadable "
            "ledger entries dropped (%d confirmed)",
            services.worker.event_resend_after_s,
            report.resent,
            report.dropped,
            report.confirmed,
        )
    return report.resent
