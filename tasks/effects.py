"""Side-effect tasks: one per outbox topic family, each a few lines around EffectService.

Gateways that are down (``GatewayUnavailable``: outcome unknown) are retried with the capped
backoff of ``tasks.publish.TASK_RETRY``; the cap stays far below the broker's visibility
timeout. A task that waits to retry postpones its outbox row, so the relay's redelivery (for
messages the broker lost) starts counting from the retry, not from the first publish. When
retries run out the case takes its slow path (``EffectService.handle_exhausted``).

Notices (the notifications of ``case.transitioned`` and the like) come from the relay many to
a message (``aftersales.notify_many``): one task, one delivery call and one completing
transaction for up to ``tasks.publish.NOTICES_PER_MESSAGE`` rows, where one row per task cost
three messages' worth of work per transition (docs/adr/0009).
"""

from __future__ import annotations

import logging
from typing import Any

from celery import Task, shared_task
from sqlalchemy.exc import InterfaceError, OperationalError

from tasks.publish import (
    TASK_BOOK_PICKUP,
    TASK_EXECUTE_REFUND,
    TASK_NOTIFY,
    TASK_NOTIFY_MANY,
    TASK_RETRY,
)
from tasks.runtime import runtime
from workflow.effects import RetryPolicy, entry_from_message
from workflow.errors import Conflict
from workflow.gateways import GatewayUnavailable

logger = logging.getLogger(__name__)


def _perform(task: Task, message: dict[str, Any]) -> str:
    entry = entry_from_message(message)
    try:
        result = runtime().effects.handle(entry)
    except GatewayUnavailable as error:
        _retry_unless_exhausted(task, error, [entry.id])
        result = runtime().effects.handle_exhausted(entry, str(error))
    except (OperationalError, InterfaceError, Conflict) as error:
        raise _retry(task, error) from error
    # Done, skipped or failed for good: the relay must not publish the entry again. Not reached
    # when a retry is raised or the handler fails otherwise: the entry stays pending, and the
    # relay publishes it again if it is not completed in time (the message may be lost).
    _complete([entry.id])
    return str(result.status)


def _perform_notices(task: Task, messages: list[dict[str, Any]]) -> int:
    entries = [entry_from_message(message) for message in messages]
    ids = [entry.id for entry in entries]
    try:
        runtime().effects.notify_many(entries)
    except GatewayUnavailable as error:
        _retry_unless_exhausted(task, error, ids)
        logger.warning("notices of outbox entries %s given up: %s", ids, error)
    except (OperationalError, InterfaceError, Conflict) as error:
        raise _retry(task, error) from error
    except Exception:
        # One entry the batch cannot handle (a bug) must not hold the others back: each goes
        # on as a task of its own, where it fails alone and stays pending alone.
        logger.exception("notices of outbox entries %s: handing them out one by one", ids)
        for message in messages:
            task.app.send_task(TASK_NOTIFY, args=[message])
        return 0
    _complete(ids)
    return len(ids)


def _retry(task: Task, error: Exception) -> Exception:
    if isinstance(error, Conflict):
        # Another transition won the race for the case; the effect re-reads it on retry.
        retry: Exception = task.retry(exc=error, countdown=1, max_retries=_policy(task).max_retries)
        return retry
    # The database went away (restart, dropped connection): nothing was committed; retry.
    retry_later: Exception = task.retry(
        exc=error, countdown=min(2**task.request.retries, 30), max_retries=100
    )
    return retry_later


def _retry_unless_exhausted(task: Task, error: GatewayUnavailable, ids: list[int]) -> None:
    """Raise the retry of a task whose gateway is down; return when its retries ran out."""
    policy = _policy(task)
    retries = task.request.retries
    if retries < policy.max_retries:
        countdown = policy.delay(retries)
        _postpone(ids, countdown)
        raise task.retry(exc=error, countdown=countdown, max_retries=policy.max_retries) from error


def _policy(task: Task) -> RetryPolicy:
    # A batch of notices retries as one notice would.
    return TASK_RETRY[TASK_NOTIFY if task.name == TASK_NOTIFY_MANY else task.name]


def _postpone(entry_ids: list[int], seconds: float) -> None:
    try:
        runtime().relay.postpone(seconds, *entry_ids)
    except (OperationalError, InterfaceError, Conflict):
        # Only an optimisation: without it the relay may start a second retry chain.
        logger.warning("outbox entries %s: could not postpone them", entry_ids, exc_info=True)


def _complete(entry_ids: list[int]) -> None:
    try:
        runtime().relay.complete(*entry_ids)
    except (OperationalError, InterfaceError, Conflict):
        # The effect is done. Without the mark the relay publishes the entry again later, and
        # the idempotent handler finds nothing to do and completes it then.
        logger.warning("outbox entries %s: could not mark them completed", entry_ids, exc_info=True)


@shared_task(name=TASK_BOOK_PICKUP, bind=True, ignore_result=True)
def book_pickup_task(self: Task, message: dict[str, Any]) -> str:
    return _perform(self, message)


@shared_task(name=TASK_EXECUTE_REFUND, bind=True, ignore_result=True)
def execute_refund_task(self: Task, message: dict[str, Any]) -> str:
    return _perform(self, message)


@shared_task(name=TASK_NOTIFY, bind=True, ignore_result=True)
def notify_task(self: Task, message: dict[str, Any]) -> str:
    return _perform(self, message)


@shared_task(name=TASK_NOTIFY_MANY, bind=True, ignore_result=True)
def notify_many_task(self: Task, messages: list[dict[str, Any]]) -> int:
    return _perform_notices(self, messages)
