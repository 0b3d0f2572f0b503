"""Durable timers: beat asks for a sweep every second; the sweep fires what is due.

Timers are rows written by transitions, never Celery countdowns. Any number of sweeps may run
at once (on any number of workers): each claims a disjoint batch (``FOR UPDATE SKIP LOCKED`` on
PostgreSQL, so a claim never waits for another's), then fires it ``CaseService.timer_batch``
timers to a transaction. With many timers due at once every worker process that picks up a
sweep keeps claiming until none are left, so they share the backlog batch by batch; a claim
commits at once, so the rows are locked only while they are being claimed.
"""

from __future__ import annotations

import os
import socket
import time
from datetime import timedelta
from typing import Any

from celery import shared_task

from tasks.runtime import runtime

#: A sweep stops claiming new batches after this long, so one busy sweep does not hold a worker
#: while beat's next ticks queue behind it; the next sweep continues where it stopped.
SWEEP_BUDGET_SECONDS = 20.0


@shared_task(name="aftersales.sweep_timers", bind=True, ignore_result=True)
def sweep_timers_task(self: Any) -> int:
    """Fire due timers in batches until none are due or the time budget is spent."""
    services = runtime()
    settings = services.worker
    claimer = f"{socket.gethostname()}:{os.getpid()}"
    fired = 0
    started = time.monotonic()
    while time.monotonic() - started < SWEEP_BUDGET_SECONDS:
        runs = services.cases.sweep_timers(
            claimer, settings.timer_sweep_batch, timedelta(seconds=settings.timer_reclaim_after_s)
        )
        fired += sum(run.fired for run in runs)
        if len(runs) < settings.timer_sweep_batch:
            break
    return fired
