"""Task counts and durations for ``/metrics``, counted where tasks run and added to the database.

Every process that runs tasks (a prefork pool child, or the worker itself with the threads pool)
times each task between Celery's ``task_prerun`` and ``task_postrun`` signals and adds the
counts to ``task_stats`` (``persistence.task_stats``) every ``FLUSH_EVERY_S`` from a thread of
its own (a pool child may run no further task for a long time: its counts must not wait for
one), and when the process stops. The database is the one place every worker on every host
reaches and that outlives them, so any API process reports the totals of all of them
(docs/workers.md, "Monitoring", and docs/adr/0015 say why not the API's own counters or
Celery's events).

What a process counted and has not flushed is lost if it is killed (``kill -9``, the OOM killer):
at most ``FLUSH_EVERY_S`` of its tasks. The counts are for monitoring; nothing depends on them.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from typing import Any, Protocol

from celery.signals import task_postrun, task_prerun, worker_process_shutdown, worker_shutdown

from persistence.task_stats import Deltas, bucket_of
from tasks.runtime import runtime

#: The longest a process keeps counts before adding them to the database (s).
FLUSH_EVERY_S = 5.0
#: Celery's task states, as the outcome label (others are lowercased: ``rejected``, ``ignored``).
OUTCOMES = {"SUCCESS": "succeeded", "FAILURE": "failed", "RETRY": "retried"}

logger = logging.getLogger(__name__)


class TaskStatsSink(Protocol):
    def add(self, deltas: Deltas) -> None: ...


class TaskStats:
    """The counts of one process since its last flush. Thread-safe: the threads pool runs
    tasks, and so their signals, on several threads at once."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._started: dict[str, float] = {}
        self._counts: dict[tuple[str, str, int], tuple[int, float]] = {}
        self._last_flush = clock()
        #: The process whose flusher thread runs (a forked pool child starts its own).
        self._flusher_pid: int | None = None

    def flush_periodically(
        self, sink: Callable[[], TaskStatsSink | None], every_s: float = FLUSH_EVERY_S
    ) -> None:
        """Start this process's flusher thread unless it runs: every ``every_s`` it adds what
        was counted. A daemon thread: the shutdown signals flush the rest."""
        with self._lock:
            if self._flusher_pid == os.getpid():
                return
            self._flusher_pid = os.getpid()

        def run() -> None:
            while True:
                time.sleep(every_s)  # a period, not a wait for another thread
                self.flush(sink, force=True)

        threading.Thread(target=run, name="task-stats-flusher", daemon=True).start()

    def started(self, task_id: str) -> None:
        with self._lock:
            self._started[task_id] = self._clock()

    def finished(self, task_id: str, task: str, state: str | None) -> None:
        with self._lock:
            began = self._started.pop(task_id, None)
        if began is not None:
            outcome = OUTCOMES.get(state or "", (state or "unknown").lower())
            self.record(task, outcome, self._clock() - began)

    def record(self, task: str, outcome: str, seconds: float, count: int = 1) -> None:
        """``count`` runs that took ``seconds`` together (a coalesced job of ``count`` events:
        each falls in the bucket of its share, and the sum is the job's time)."""
        key = (task, outcome, bucket_of(seconds / count * 1000))
        with self._lock:
            n, total = self._counts.get(key, (0, 0.0))
            self._counts[key] = (n + count, total + seconds)

    def flush(self, sink: Callable[[], TaskStatsSink | None], force: bool = False) -> None:
        """Add the counts to ``sink()`` when ``FLUSH_EVERY_S`` passed (or ``force``). On failure
        they are kept for the next flush; nothing here raises into a task."""
        with self._lock:
            if not self._counts:
                return
            if not force and self._clock() - self._last_flush < FLUSH_EVERY_S:
                return
            counts, self._counts = self._counts, {}
            self._last_flush = self._clock()
        try:
            target = sink()
            if target is None:
                raise RuntimeError("this process has no task stats store")
            target.add(counts)
        except Exception:
            logger.warning("task counts could not be written; kept for the next try", exc_info=True)
            with self._lock:
                for key, (n, total) in counts.items():
                    m, more = self._counts.get(key, (0, 0.0))
                    self._counts[key] = (n + m, total + more)


#: This process's counts: one per process (a pool child forks it empty from the worker, which
#: runs no task itself on prefork).
stats = TaskStats()


def runtime_sink() -> TaskStatsSink | None:
    """The store of this process's runtime (built on first use, as for any task)."""
    return runtime().task_stats


@task_prerun.connect
def _on_prerun(task_id: str | None = None, **_: Any) -> None:
    if task_id:
        stats.started(task_id)


@task_postrun.connect
def _on_postrun(
    task_id: str | None = None, task: Any = None, state: str | None = None, **_: Any
) -> None:
    if task_id and task is not None:
        stats.finished(task_id, str(task.name), state)
        stats.flush_periodically(runtime_sink)


@worker_process_shutdown.connect
@worker_shutdown.connect
def _on_shutdown(**_: Any) -> None:
    stats.flush(runtime_sink, force=True)
