"""How outbox rows become Celery messages: the task name of each kind of effect.

The domain names effects by kind (``workflow.effects.EffectKind``); these are the stable task
names the workers register (``tasks/effects.py``) and the relay publishes to (``publish``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from types import MappingProxyType
from typing import Any

from celery import current_app

from workflow.effects import (
    RETRY_POLICY,
    EffectKind,
    RetryPolicy,
    effect_for_topic,
    entry_to_message,
)
from workflow.model import OutboxEntry

TASK_BOOK_PICKUP = "aftersales.book_pickup"
TASK_EXECUTE_REFUND = "aftersales.execute_refund"
TASK_NOTIFY = "aftersales.notify"
#: The notices of many outbox rows in one message (``EffectService.notify_many``); the relay
#: publishes notices this way, ``TASK_NOTIFY`` stays for one row (and for messages already queued).
TASK_NOTIFY_MANY = "aftersales.notify_many"

#: The task performing each kind of effect.
TASK_FOR_EFFECT: Mapping[EffectKind, str] = MappingProxyType(
    {
        EffectKind.BOOK_PICKUP: TASK_BOOK_PICKUP,
        EffectKind.EXECUTE_REFUND: TASK_EXECUTE_REFUND,
        EffectKind.NOTIFY: TASK_NOTIFY,
    }
)
#: Which task handles each outbox topic.
effects_for_topic: Mapping[str, str] = MappingProxyType(
    {topic: TASK_FOR_EFFECT[kind] for topic, kind in effect_for_topic.items()}
)
#: The retry policy of each task (the domain's policy of its kind of effect).
TASK_RETRY: Mapping[str, RetryPolicy] = MappingProxyType(
    {TASK_FOR_EFFECT[kind]: policy for kind, policy in RETRY_POLICY.items()}
)

#: The most notices one ``aftersales.notify_many`` message carries.
NOTICES_PER_MESSAGE = 100


def publish(entries: Sequence[OutboxEntry]) -> None:
    """Hand outbox rows to the tasks that perform their effects: notices many to a message,
    every other row (pickups, refunds: each with retries of its own) alone."""
    notices: list[dict[str, Any]] = []
    for entry in entries:
        task = effects_for_topic[entry.topic]
        if task == TASK_NOTIFY:
            notices.append(entry_to_message(entry))
        else:
            current_app.send_task(task, args=[entry_to_message(entry)])
    for start in range(0, len(notices), NOTICES_PER_MESSAGE):
        chunk = notices[start : start + NOTICES_PER_MESSAGE]
        current_app.send_task(TASK_NOTIFY_MANY, args=[chunk])
