"""Tasks only the worker tests load (``celery worker --include workers.probe_tasks``)."""

from __future__ import annotations

import os
import time
import uuid
from pathlib import Path

from celery import Task, shared_task

#: How long ``hold`` waits for its release file before failing (s).
HOLD_LIMIT_S = 60.0


@shared_task(name="aftersales_test.hold", bind=True)
def hold_task(self: Task, folder: str, token: str) -> None:
    """Record an attempt (``<token>.started.<pid>.<n>``), wait for ``<token>.release``, then
    record ``<token>.done.<pid>``: a task that is running for as long as a test needs."""
    base = Path(folder)
    pid = os.getpid()
    (base / f"{token}.started.{pid}.{uuid.uuid4().hex}").touch()
    deadline = time.monotonic() + HOLD_LIMIT_S
    while not (base / f"{token}.release").exists():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{token}.release did not appear within {HOLD_LIMIT_S} s")
        time.sleep(0.02)
    (base / f"{token}.done.{pid}").touch()
