"""The producers' ledger of unconfirmed events, in the broker's Redis.

``tasks/producer.py`` writes it (its keys and layout are defined there, since producers copy
that file alone); ``tasks.resender.EventResender`` decides what leaves it and what is sent
again. Only a Redis broker has a ledger.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import redis

from config.settings import Settings
from tasks.broker import broker_config
from tasks.producer import UNCONFIRMED_ENVELOPES_KEY, UNCONFIRMED_KEY
from tasks.resender import Unconfirmed

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
    """``tasks.resender.UnconfirmedEvents`` on the broker's Redis, under its key prefix."""

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


def ledger_for(settings: Settings) -> RedisUnconfirmedEvents | None:
    """The ledger on the broker of ``settings``; None unless it is Redis."""
    broker = broker_config(settings)
    if not broker.is_redis:
        return None
    return RedisUnconfirmedEvents(redis.Redis.from_url(broker.url), settings.broker.key_prefix)


def _entry(member: str, raw: bytes | str | None) -> Unconfirmed:
    try:
        record: Any = json.loads(raw) if raw is not None else None
        envelope = record["envelope"] if isinstance(record, dict) else None
        resends = int(record.get("resends", 0)) if isinstance(record, dict) else 0
    except (ValueError, TypeError):
        return Unconfirmed(member, None, 0)
    return Unconfirmed(member, envelope if isinstance(envelope, dict) else None, resends)
