"""Task counts reach the database from a process that runs no further task: a pool child that
went idle must not keep its counts until it stops (``tasks.task_stats``)."""

from __future__ import annotations

import threading

from entrypoints.processes import wait_until
from persistence.task_stats import Deltas
from tasks.task_stats import TaskStats


class Sink:
    def __init__(self) -> None:
        self.added: list[Deltas] = []
        self.lock = threading.Lock()

    def add(self, deltas: Deltas) -> None:
        with self.lock:
            self.added.append(dict(deltas))

    def total(self) -> int:
        with self.lock:
            return sum(count for deltas in self.added for count, _ in deltas.values())


def test_counts_are_flushed_without_another_task() -> None:
    # given a process that ran three tasks and then none
    stats = TaskStats()
    sink = Sink()
    for _ in range(3):
        stats.record("aftersales.book_pickup", "failed", 0.01)
    stats.flush_periodically(lambda: sink, every_s=0.05)

    # then its counts reach the sink by the flusher thread alone
    wait_until(lambda: sink.total() == 3, "the three runs to be flushed", 10.0, 0.01)

    # and counts recorded later are flushed too, by the same thread
    stats.record("aftersales.book_pickup", "succeeded", 0.01)
    wait_until(lambda: sink.total() == 4, "the fourth run to be flushed", 10.0, 0.01)


def test_one_flusher_thread_per_process() -> None:
    stats = TaskStats()
    sink = Sink()
    before = {thread.ident for thread in threading.enumerate()}
    stats.flush_periodically(lambda: sink, every_s=60)
    stats.flush_periodically(lambda: sink, every_s=60)
    started = [t for t in threading.enumerate() if t.ident not in before]
    assert [thread.name for thread in started] == ["task-stats-flusher"]
