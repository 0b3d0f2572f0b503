"""``task_stats``: how many Celery tasks ran and how long they took, added by every worker
process (``tasks.task_stats``) and read by ``/metrics`` (``persistence.readings``).

One row per task name, outcome and duration bucket; each process adds what it counted since its
last flush, so the table holds the totals of every worker on every host, and survives restarts
of the workers and of the API processes that read it.
"""

from __future__ import annotations

from collections.abc import Mapping

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Engine

from persistence.tables import task_stats

#: Upper bounds (ms) of the task duration buckets. Our tasks are database round trips and short
#: batches: most take milliseconds; seconds mean a slow gateway or a sweep working off a backlog
#: (a sweep stops after 20 s), minutes a stuck task near its time limit.
DURATION_BUCKETS_MS: tuple[int, ...] = (
    5,
    10,
    25,
    50,
    100,
    250,
    500,
    1_000,
    2_500,
    5_000,
    10_000,
    30_000,
    60_000,
    300_000,
)
#: ``le_ms`` of the bucket above the last bound.
ABOVE_ALL_MS = -1

#: (task, outcome, le_ms) -> (count, seconds): one process's counts since its last flush.
Deltas = Mapping[tuple[str, str, int], tuple[int, float]]


def bucket_of(milliseconds: float) -> int:
    """The ``le_ms`` of the bucket a duration falls in."""
    for bound in DURATION_BUCKETS_MS:
        if milliseconds <= bound:
            return bound
    return ABOVE_ALL_MS


class SqlTaskStats:
    def __init__(self, engine: Engine) -> None:
        self._engine = engine

    def add(self, deltas: Deltas) -> None:
        """Add these counts to the totals, in one transaction. Rows are written in key order,
        so two processes flushing at once wait for each other instead of deadlocking."""
        if not deltas:
            return
        rows = [
            {"task": task, "outcome": outcome, "le_ms": le_ms, "count": n, "seconds_sum": s}
            for (task, outcome, le_ms), (n, s) in sorted(deltas.items())
        ]
        insert = (
            postgresql.insert(task_stats)
            if self._engine.dialect.name == "postgresql"
            else sqlite.insert(task_stats)
        )
        statement = insert.on_conflict_do_update(
            index_elements=[task_stats.c.task, task_stats.c.outcome, task_stats.c.le_ms],
            set_={
                "count": task_stats.c.count + insert.excluded.count,
                "seconds_sum": task_stats.c.seconds_sum + insert.excluded.seconds_sum,
            },
        )
        with self._engine.begin() as connection:
            connection.execute(statement, rows)


def read_totals(connection: sa.Connection) -> dict[tuple[str, str, int], tuple[int, float]]:
    """Every row of ``task_stats``: (task, outcome, le_ms) -> (count, seconds)."""
    query = sa.select(
        task_stats.c.task,
        task_stats.c.outcome,
        task_stats.c.le_ms,
        task_stats.c.count,
        task_stats.c.seconds_sum,
    )
    return {
        (row[0], row[1], int(row[2])): (int(row[3]), float(row[4]))
        for row in connection.execute(query)
    }
