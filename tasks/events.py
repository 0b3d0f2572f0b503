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

import logging
import time
from typing import Any

from celery import Task, shared_task
from sqlalchemy.exc import InterfaceError, OperationalError

from config.errors import SetupError
from tasks import task_stats
from tasks.runtime import runtime
from workflow.errors import Conflict
from workflow.events.envelope import as_document
from workflow.redaction import masked

logger = logging.getLogger(__name__)

#: The database or network failed, the schema is being migrated, or the case kept changing
#: under the event: retry it (a redelivered event is recognised as a duplicate).
_INFRASTRUCTURE = (OSError, OperationalError, InterfaceError, Conflict, SetupError)
#: Retry an infrastructure failure after 1, 2, 4, ... s, never more than a minute apart.
_RETRY = {"max_retries": 100, "retry_backoff": True, "retry_backoff_max": 60}
INGEST_EVENT_TASK = "aftersales.ingest_event"


class _KeepsFailedEvents(Task):
    """A task whose events are never dropped with their message.

    Celery acknowledges a message whose task failed (acks_late acks on failure too). An event
    task fails only on an error of ours (a bug) or after its retries ran out; ``on_failure``
    then keeps the events as ``ingest_failed`` dead letters (``aftersales events
    dead-letters``, ``replay``). When even that cannot be written, the error is logged with the
    events: the only place left to find them.
    """

    def on_failure(
        self, exc: BaseException, task_id: str, args: Any, kwargs: Any, einfo: Any
    ) -> None:
        events = args[0] if args else kwargs.get("event", kwargs.get("events"))
        raws = events if isinstance(events, list) else [events]
        reason = f"{type(exc).__name__}: {exc}"[:500]
        try:
            kept = runtime().events.keep_failed(raws, f"ingestion failed ({reason})")
        except Exception:
            # The only place left to find them; bank account numbers masked all the same.
            shown = [masked(as_document(raw)) for raw in raws]
            logger.exception("events of failed task %s NOT kept: %r", task_id, shown)
            return
        logger.error(
            "task %s failed (%s); %d event(s) kept as dead letters", task_id, reason, len(kept)
        )


@shared_task(
    name=INGEST_EVENT_TASK,
    bind=True,
    base=_KeepsFailedEvents,
    ignore_result=True,
    autoretry_for=_INFRASTRUCTURE,
    # A prefork worker applies the messages that wait for a free process together.
    Strategy="tasks.coalesce:strategy",
    **_RETRY,
)
def ingest_event_task(self: Task, event: Any) -> str:
    return str(runtime().events.ingest(event).status)


def apply_coalesced(events: list[Any]) -> list[str]:
    """What a pool child runs for a job of single-event messages (tasks/coalesce.py): their
    events in one ``ingest_many``, a status each. An exception hands each message back to
    Celery's path, where ``ingest_event_task`` runs it alone (and is counted then)."""
    started = time.monotonic()
    statuses = [str(result.status) for result in runtime().events.ingest_many(events)]
    # No task signal runs for a job: count its messages here, each with its share of the time.
    task_stats.stats.record(INGEST_EVENT_TASK, "succeeded", time.monotonic() - started, len(events))
    task_stats.stats.flush_periodically(task_stats.runtime_sink)
    return statuses


@shared_task(
    name="aftersales.ingest_events",
    bind=True,
    base=_KeepsFailedEvents,
    ignore_result=True,
    autoretry_for=_INFRASTRUCTURE,
    **_RETRY,
)
def ingest_events_task(self: Task, events: Any) -> int:
    if not isinstance(events, list):
        events = [events]
    return len(runtime().events.ingest_many(events))
