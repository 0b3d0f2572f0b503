"""The outbox relay task: publishes committed outbox rows to the effect tasks."""

from __future__ import annotations

from typing import Any

from celery import shared_task

from tasks.runtime import RELAY_TASK, runtime


@shared_task(name=RELAY_TASK, bind=True, ignore_result=True)
def relay_outbox_task(self: Any) -> int:
    return runtime().relay.relay()
