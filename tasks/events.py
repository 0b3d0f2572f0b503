"""Inbound events from producers, by task name, without importing our code:

    celery.send_task("aftersales.ingest_event", args=[envelope])
    celery.send_task("aftersales.ingest_events", args=[[envelope, ...]])

A bad event is dead-lettered by the service, never raised; an infrastructure error (database
unreachable) propagates, and the task is retried (acks_late keeps the message meanwhile).

``ingest_events`` applies its list ``EventService.max_batch`` events to a transaction, a savepoint
each (``EventService.ingest_many``): one commit, and one wait for the disk, per chunk instead of
per event. A retried batch is safe: the events that did commit come back as duplicates.
"""

from __future__ import annotations

from typing import Any

from celery import Task, shared_task
from sqlalchemy.exc import InterfaceError, OperationalError

from tasks.runtime import runtime
from workflow.errors import Conflict

#: The database or network failed, or the case kept changing under the event: retry it
#: (a redelivered event is recognised as a duplicate).
_INFRASTRUCTURE = (OSError, OperationalError, InterfaceError, Conflict)
#: Retry an infrastructure failure after 1, 2, 4, ... s, never more than a minute apart.
_RETRY = {"max_retries": 100, "retry_backoff": True, "retry_backoff_max": 60}


@shared_task(
    name="aftersales.ingest_event",
    bind=True,
    ignore_result=True,
    autoretry_for=_INFRASTRUCTURE,
    **_RETRY,
)
def ingest_event_task(self: Task, event: Any) -> str:
    return str(runtime().events.ingest(event).status)


@shared_task(
    name="aftersales.ingest_events",
    bind=True,
    ignore_result=True,
    autoretry_for=_INFRASTRUCTURE,
    **_RETRY,
)
def ingest_events_task(self: Task, events: Any) -> int:
    if not isinstance(events, list):
        events = [events]
    return len(runtime().events.ingest_many(events))
