"""The task the naive-timer comparison schedules with ``apply_async(countdown=...)``.

Loaded only by the benchmark's own workers (``celery worker --include bench.countdown_probe``).
Each run counts its executions in a Redis hash, one field per task id (HINCRBY is atomic), so a
task the broker delivered twice shows up as a count of 2 however the two runs interleave.
"""

from __future__ import annotations

import os
from typing import Any

import redis
from celery import shared_task

#: Where the probe counts (the benchmark's private Redis); set in the worker's environment.
COUNTER_URL_ENV = "AFTERSALES_BENCH_COUNTER_URL"
NAME = "aftersales_bench.countdown_probe"

_client: redis.Redis | None = None


def _counter() -> redis.Redis:
    # One connection per pool process, made on first use (never across the prefork fork).
    global _client
    if _client is None:
        _client = redis.Redis.from_url(os.environ[COUNTER_URL_ENV])
    return _client


@shared_task(name=NAME, bind=True, ignore_result=True)
def countdown_probe(self: Any, counter_key: str) -> None:
    """Count one execution of this task id under ``counter_key``."""
    _counter().hincrby(counter_key, str(self.request.id), 1)
