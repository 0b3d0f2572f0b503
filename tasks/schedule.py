"""What beat sends, and how often: stable task names with the setting that holds each period.

Only entries whose task is defined go into the schedule, so a name can be listed here before its
task module lands (beat would otherwise send messages no worker knows, every second).
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass
from typing import Any

from config.settings import WorkerSettings


@dataclass(frozen=True)
class Periodic:
    #: The stable task name (``aftersales.<name>``).
    task: str
    #: The ``WorkerSettings`` field giving the period in seconds.
    period_setting: str
    #: Scheduled only on a Redis broker.
    redis_only: bool = False


PERIODIC_TASKS: tuple[Periodic, ...] = (
    Periodic("aftersales.sweep_timers", "timer_sweep_interval_s"),
    Periodic("aftersales.relay_outbox", "outbox_relay_interval_s"),
    # Producers keep their events in a ledger only on Redis (tasks/unconfirmed.py).
    Periodic("aftersales.resend_unconfirmed_events", "event_resend_interval_s", redis_only=True),
)

#: A periodic message not started within this many periods is dropped by the worker: the next
#: one does the same work, and a worker back from an outage should not run a backlog of sweeps.
EXPIRES_AFTER_PERIODS = 3


def beat_schedule(
    worker: WorkerSettings, defined: Collection[str], redis: bool = False
) -> dict[str, dict[str, Any]]:
    """Celery's ``beat_schedule`` for the entries of ``PERIODIC_TASKS`` whose task is defined
    (and that need Redis only when ``redis``)."""
    schedule: dict[str, dict[str, Any]] = {}
    for entry in PERIODIC_TASKS:
        if entry.task not in defined or (entry.redis_only and not redis):
            continue
        period = float(getattr(worker, entry.period_setting))
        schedule[entry.task] = {
            "task": entry.task,
            "schedule": period,
            "options": {"expires": period * EXPIRES_AFTER_PERIODS},
        }
    return schedule
