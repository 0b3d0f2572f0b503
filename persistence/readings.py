"""Read-only queries for the HTTP API: a case's timers and the aggregates ``/metrics`` shows.

Metrics are computed from the tables at scrape time rather than counted in one process: cases
move in the API, the workers and the CLI alike, and only the database sees all of them. The
transition counts scan the log, which is append-only, so they only ever grow (Prometheus
counters); the exporter caches a scrape for a few seconds.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from persistence.tables import cases, dead_letters, outbox, timers, transitions
from persistence.task_stats import ABOVE_ALL_MS, DURATION_BUCKETS_MS, read_totals
from workflow.model import Timer, TimerStatus
from workflow.states import CaseState


@dataclass(frozen=True)
class TimerReading:
    timer: Timer
    #: How long after ``due_at`` it fired (ms), for fired timers.
    lateness_ms: int | None


@dataclass(frozen=True)
class LatenessHistogram:
    #: Cumulative counts per upper bound in seconds (``le``), as Prometheus wants them.
    buckets: list[tuple[float, int]]
    count: int
    sum_seconds: float


@dataclass(frozen=True)
class DurationHistogram:
    #: Cumulative counts per upper bound in seconds (``le``), as Prometheus wants them.
    buckets: list[tuple[float, int]]
    count: int
    sum_seconds: float


@dataclass(frozen=True)
class MetricsSnapshot:
    #: (type, state) -> cases
    cases: dict[tuple[str, str], int]
    #: (type, trigger, to_state) -> transitions logged
    transitions: dict[tuple[str, str, str], int]
    lateness: LatenessHistogram
    outbox_backlog: int
    outbox_oldest_pending_at: datetime | None
    #: status -> letters
    dead_letters: dict[str, int]
    #: topic -> outbox rows the relay parked and no consumer completed since
    outbox_parked: dict[str, int]
    #: (task, outcome) -> how many ran and how long they took, across every worker process
    task_durations: dict[tuple[str, str], DurationHistogram]


#: Upper bounds (s) of the timer lateness histogram: the sweep runs every second, so most
#: timers fire within a few; minutes mean the workers were down or behind.
LATENESS_BUCKETS_S: tuple[float, ...] = (0.5, 1, 2, 5, 10, 30, 60, 300, 900, 3600)


class SqlReadings:
    def __init__(self, engine: Engine) -> None:
        self._engine = engine

    def case_timers(self, case_id: int) -> list[TimerReading]:
        """Every timer the case armed, oldest first."""
        statement = sa.select(timers).where(timers.c.case_id == case_id).order_by(timers.c.id)
        with self._engine.connect() as connection:
            rows = connection.execute(statement).all()
        return [
            TimerReading(
                Timer(
                    id=row.id,
                    case_id=row.case_id,
                    kind=row.kind,
                    trigger=row.trigger,
                    state=CaseState(row.state),
                    version=row.version,
                    due_at=row.due_at,
                    created_at=row.created_at,
                    status=TimerStatus(row.status),
                    fired_at=row.fired_at,
                    claimed_at=row.claimed_at,
                    claimed_by=row.claimed_by,
                ),
                row.lateness_ms,
            )
            for row in rows
        ]

    def ping(self) -> None:
        """One round trip to the database; raises when it cannot be reached."""
        with self._engine.connect() as connection:
            connection.execute(sa.text("SELECT 1"))

    def snapshot(self, buckets: Sequence[float] = LATENESS_BUCKETS_S) -> MetricsSnapshot:
        with self._engine.connect() as connection:
            case_counts = {
                (row[0], row[1]): int(row[2])
                for row in connection.execute(
                    sa.select(cases.c.type, cases.c.state, sa.func.count()).group_by(
                        cases.c.type, cases.c.state
                    )
                )
            }
            transition_counts = {
                (row[0], row[1], row[2]): int(row[3])
                for row in connection.execute(
                    sa.select(
                        cases.c.type, transitions.c.trigger, transitions.c.to_state, sa.func.count()
                    )
                    .select_from(transitions.join(cases, transitions.c.case_id == cases.c.id))
                    .group_by(cases.c.type, transitions.c.trigger, transitions.c.to_state)
                )
            }
            fired = timers.c.lateness_ms.is_not(None)
            columns = [
                sa.func.count(timers.c.lateness_ms),
                sa.func.coalesce(sa.func.sum(timers.c.lateness_ms), 0),
                *(
                    sa.func.coalesce(
                        sa.func.sum(sa.case((timers.c.lateness_ms <= bound * 1000, 1), else_=0)),
                        0,
                    )
                    for bound in buckets
                ),
            ]
            row = connection.execute(sa.select(*columns).where(fired)).one()
            lateness = LatenessHistogram(
                buckets=[(bound, int(row[2 + i])) for i, bound in enumerate(buckets)],
                count=int(row[0]),
                sum_seconds=int(row[1]) / 1000,
            )
            not_completed = outbox.c.completed_at.is_(None)
            pending = sa.and_(not_completed, outbox.c.parked_at.is_(None))
            backlog_row = connection.execute(
                sa.select(sa.func.count(), sa.func.min(outbox.c.created_at)).where(pending)
            ).one()
            parked = {
                row[0]: int(row[1])
                for row in connection.execute(
                    sa.select(outbox.c.topic, sa.func.count())
                    .where(not_completed, outbox.c.parked_at.is_not(None))
                    .group_by(outbox.c.topic)
                )
            }
            task_totals = read_totals(connection)
            letters = {
                row[0]: int(row[1])
                for row in connection.execute(
                    sa.select(dead_letters.c.status, sa.func.count()).group_by(
                        dead_letters.c.status
                    )
                )
            }
        oldest = backlog_row[1]
        return MetricsSnapshot(
            cases=case_counts,
            transitions=transition_counts,
            lateness=lateness,
            outbox_backlog=int(backlog_row[0]),
            outbox_oldest_pending_at=oldest,
            dead_letters=letters,
            outbox_parked=parked,
            task_durations=_histograms(task_totals),
        )


def _histograms(
    totals: dict[tuple[str, str, int], tuple[int, float]],
) -> dict[tuple[str, str], DurationHistogram]:
    """Per (task, outcome), the bucket rows summed into a cumulative histogram at the standard
    bounds. A row of a bound no longer used counts under the first standard bound above it."""
    per_series: dict[tuple[str, str], list[tuple[int, int, float]]] = {}
    for (task, outcome, le_ms), (count, seconds) in totals.items():
        per_series.setdefault((task, outcome), []).append((le_ms, count, seconds))
    histograms = {}
    for key, rows in sorted(per_series.items()):
        buckets = [
            (bound / 1000, sum(n for le, n, _ in rows if le != ABOVE_ALL_MS and le <= bound))
            for bound in DURATION_BUCKETS_MS
        ]
        histograms[key] = DurationHistogram(
            buckets=buckets,
            count=sum(n for _, n, _ in rows),
            sum_seconds=sum(s for _, _, s in rows),
        )
    return histograms
