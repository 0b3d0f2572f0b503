"""The timers benchmark's measured phases: a steady stream of due timers, a burst due at one
instant, and the check that no timer fired twice.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import sqlalchemy as sa
from rich.progress import Progress
from sqlalchemy.engine import Engine

from bench import resources
from bench.timers_deployment import Deployment
from bench.timers_seeding import Seeded


def _percentile(values: list[int], share: float) -> float:
    ordered = sorted(values)
    return float(ordered[min(len(ordered) - 1, int(share * len(ordered)))]) if ordered else 0.0


@dataclass
class Steady:
    rate: float
    seconds: float
    timers: int
    fired: int
    lateness_ms: list[int]
    load: str

    @property
    def complete(self) -> bool:
        return self.fired == self.timers

    @property
    def p50(self) -> float:
        return _percentile(self.lateness_ms, 0.50)

    @property
    def p99(self) -> float:
        return _percentile(self.lateness_ms, 0.99)

    @property
    def max(self) -> float:
        return float(max(self.lateness_ms, default=0))


def _statuses(engine: Engine, case_range: tuple[int, int]) -> dict[str, int]:
    with engine.connect() as connection:
        rows = connection.execute(
            sa.text(
                "SELECT status, count(*) FROM timers WHERE case_id BETWEEN :lo AND :hi "
                "GROUP BY status"
            ),
            {"lo": case_range[0], "hi": case_range[1]},
        ).all()
    return {str(status): int(count) for status, count in rows}


def steady_state(
    seeded: Seeded,
    rate: float,
    seconds: float,
    progress: Progress,
    lead_s: float = 5.0,
    drain_s: float = 30.0,
) -> Steady:
    """The steady timers fall due ``rate`` per second on the real clock from ``lead_s`` from
    now; wait until all fired (or ``drain_s`` past the last due time); their lateness."""
    lo, hi = seeded.steady_range()
    first_due = datetime.now(UTC) + timedelta(seconds=lead_s)
    with seeded.engine.begin() as connection:
        connection.execute(
            sa.text(
                "UPDATE timers SET due_at = CAST(:first AS timestamptz) "
                "+ (case_id - :lo) / CAST(:rate AS float) * interval '1 second' "
                "WHERE case_id BETWEEN :lo AND :hi AND status = 'pending'"
            ),
            {"first": first_due, "lo": lo, "hi": hi, "rate": rate},
        )
    total = hi - lo + 1
    task = progress.add_task(
        f"steady state: {rate:.0f} timers/s due for {seconds:.0f} s", total=total
    )
    deadline = time.monotonic() + lead_s + seconds + drain_s
    fired = 0
    while time.monotonic() < deadline:
        fired = _statuses(seeded.engine, (lo, hi)).get("fired", 0)
        progress.update(task, completed=fired)
        if fired >= total:
            break
        time.sleep(1.0)
    progress.stop_task(task)
    with seeded.engine.begin() as connection:
        # A timer not fired by the deadline is at least this late; counting it (rather than
        # leaving it out) keeps a backlog from flattering the percentiles. It is then cancelled
        # so that the burst measures the burst alone.
        lateness = [
            int(value)
            for (value,) in connection.execute(
                sa.text(
                    "SELECT CASE WHEN status = 'fired' THEN lateness_ms ELSE CAST(1000 * "
                    "extract(epoch FROM now() - due_at) AS bigint) END "
                    "FROM timers WHERE case_id BETWEEN :lo AND :hi AND status <> 'cancelled'"
                ),
                {"lo": lo, "hi": hi},
            )
        ]
        connection.execute(
            sa.text(
                "UPDATE timers SET status = 'cancelled' WHERE case_id BETWEEN :lo AND :hi "
                "AND status IN ('pending', 'claimed')"
            ),
            {"lo": lo, "hi": hi},
        )
    return Steady(rate, seconds, total, fired, lateness, resources.load_average())


@dataclass
class Burst:
    timers: int
    concurrency: int
    #: Seconds from moving the clock until every burst timer was fired (None: not within timeout).
    all_fired_s: float | None
    fired: int
    elapsed_s: float
    #: (seconds since the clock moved, timers fired) about every 10 s.
    curve: list[tuple[float, int]]
    outbox_pending: int
    load: str

    @property
    def rate(self) -> float:
        return self.fired / self.elapsed_s if self.elapsed_s else 0.0


def burst(seeded: Seeded, deploy: Deployment, timeout_s: float, progress: Progress) -> Burst:
    """Move every process's clock one second past the burst instant; time until all fired."""
    lo, hi = seeded.burst_range()
    total = hi - lo + 1
    task = progress.add_task(
        f"burst: {total:,} timers due at one instant, worker -c {deploy.concurrency}", total=total
    )
    deploy.clock.set(seeded.layout.burst_at + timedelta(seconds=1))
    started = time.monotonic()
    curve: list[tuple[float, int]] = []
    fired = 0
    all_fired: float | None = None
    while True:
        fired = _statuses(seeded.engine, (lo, hi)).get("fired", 0)
        elapsed = time.monotonic() - started
        progress.update(task, completed=fired)
        if not curve or elapsed - curve[-1][0] >= 10:
            curve.append((round(elapsed, 1), fired))
        if fired >= total:
            all_fired = elapsed
            break
        if elapsed > timeout_s:
            break
        time.sleep(0.5)
    progress.stop_task(task)
    curve.append((round(time.monotonic() - started, 1), fired))
    with seeded.engine.connect() as connection:
        outbox_pending = connection.execute(
            sa.text("SELECT count(*) FROM outbox WHERE completed_at IS NULL")
        ).scalar_one()
    return Burst(
        total,
        deploy.concurrency,
        all_fired,
        fired,
        time.monotonic() - started,
        curve,
        int(outbox_pending),
        resources.load_average(),
    )


def duplicate_firings(seeded: Seeded) -> tuple[int, int]:
    """(cases closed by their timer, cases with more than one ``expire_return`` in their log)."""
    with seeded.engine.connect() as connection:
        row = connection.execute(
            sa.text(
                "SELECT count(*), count(*) FILTER (WHERE n > 1) FROM (SELECT case_id, count(*) "
                "AS n FROM transitions WHERE \"trigger\" = 'expire_return' GROUP BY case_id) s"
            )
        ).one()
    return int(row[0]), int(row[1])
