"""Side-effect tasks: one per outbox topic family, each a few lines around EffectService.

Gateways that are down (``GatewayUnavailable``: outcome unknown) are retried with the capped
backoff of ``workflow.effects.TASK_RETRY``; the cap stays far below the broker's visibility
timeout. A task that waits to retry postpones its outbox row, so the relay's redelivery (for
messages the broker lost) starts counting from the retry, not from the first publish. When
retries run out the case takes its slow path (``EffectService.handle_exhausted``).
"""

from __future__ import annotations

import logging
from typing import Any

from celery import Task, shared_task
from sqlalchemy.exc import InterfaceError, OperationalError

from tasks.runtime import runtime
from workflow.effects import (
    TASK_BOOK_PICKUP,
    TASK_EXECUTE_REFUND,
    TASK_NOTIFY,
    TASK_RETRY,
    GatewayUnavailable,
    entry_from_message,
)
from workflow.errors import Conflict

logger = logging.getLogger(__name__)


def _perform(task: Task, message: dict[str, Any]) -> str:
    entry = entry_from_message(message)
    policy = TASK_RETRY[task.name]
    try:
        result = runtime().effects.handle(entry)
    except (OperationalError, InterfaceError) as error:
        # The database went away (restart, dropped connection): nothing was committed; retry.
        raise task.retry(
            exc=error, countdown=min(2**task.request.retries, 30), max_retries=100
        ) from error
    except Conflict as error:
        # Another transition won the race for the case; the effect re-reads it on retry.
        raise task.retry(exc=error, countdown=1, max_retries=policy.max_retries) from error
    except GatewayUnavailable as error:
        retries = task.request.retries
        if retries < policy.max_retries:
            countdown = policy.delay(retries)
            _postpone(entry.id, countdown)
            raise task.retry(
                exc=error, countdown=countdown, max_retries=policy.max_retries
            ) from error
        result = runtime().effects.handle_exhausted(entry, str(error))
    # Done, skipped or failed for good: the relay must not publish the entry again. Not reached
    # when a retry is raised or the handler fails otherwise: the entry stays pending, and the
    # relay publishes it again if it is not completed in time (the message may be lost).
    _complete(entry.id)
    return str(result.status)


def _postpone(entry_id: int, seconds: float) -> None:
    try:
        runtime().relay.postpone(entry_id, seconds)
    except (OperationalError, InterfaceError, Conflict):
        # Only an optimisation: without it the relay may start a second retry chain.
        logger.warning("outbox entry %s: could not postpone it", entry_id, exc_info=True)


def _complete(entry_id: int) -> None:
    try:
        runtime().relay.complete(entry_id)
    except (OperationalError, InterfaceError, Conflict):
        # The effect is done. Without the mark the relay publishes the entry again later, and
        # the idempotent handler finds nothing to do and completes it then.
        logger.warning("outbox entry %s: could not mark it completed", entry_id, exc_info=True)


@shared_task(name=TASK_BOOK_PICKUP, bind=True, ignore_result=True)
def book_pickup_task(self: Task, message: dict[str, Any]) -> str:
    return _perform(self, message)


@shared_task(name=TASK_EXECUTE_REFUND, bind=True, ignore_result=True)
def execute_refund_task(self: Task, message: dict[str, Any]) -> str:
    return _perform(self, message)


@shared_task(name=TASK_NOTIFY, bind=True, ignore_result=True)
def notify_task(self: Task, message: dict[str, Any]) -> str:
    return _perform(self, message)
