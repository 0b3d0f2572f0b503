"""The outbox relay task: publishes committed outbox rows to the effect tasks."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from celery import shared_task

from tasks.kick import RELAY_TASK
from tasks.runtime import runtime


@shared_task(name=RELAY_TASK, bind=True, ignore_result=True)
def relay_outbox_task(self: Any) -> int:
    services = runtime()
    window = timedelta(seconds=services.worker.outbox_redeliver_after_s)
    return services.relay.relay(
        redeliver_after=window, max_attempts=services.worker.outbox_max_attempts
    )
