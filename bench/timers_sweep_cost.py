"""The timers benchmark's sweep cost with nothing due: the claim query's time and plan on a
small and a large timer table.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from datetime import datetime, timedelta

from rich.progress import Progress

from bench import resources, support
from bench.timers_seeding import Seeded
from config.policy import load_policy
from config.settings import WorkerSettings
from persistence.statements import Statements
from persistence.unit_of_work import SqlUnitOfWorkFactory
from workflow.clock import FakeClock
from workflow.service import CaseService

#: What the production sweep task passes (``WorkerSettings`` defaults).
BATCH = WorkerSettings().timer_sweep_batch
RECLAIM_AFTER = timedelta(seconds=WorkerSettings().timer_reclaim_after_s)


@dataclass
class SweepCost:
    #: Microseconds per empty sweep, one value per round, per database.
    small_us: list[float]
    large_us: list[float]
    small_pending: int
    large_pending: int
    repetitions: int
    load: str

    @property
    def ratios(self) -> list[float]:
        return [large / small for large, small in zip(self.large_us, self.small_us, strict=True)]

    @property
    def ratio(self) -> float:
        return support.median(self.ratios)


def empty_sweep_us(service: CaseService, repetitions: int) -> float:
    """Microseconds per ``sweep_timers`` call that finds nothing due: the claim statement (both
    branches) in its own transaction, exactly what each beat tick costs an idle deployment."""
    started = time.perf_counter()
    for _ in range(repetitions):
        if service.sweep_timers("bench:empty", BATCH, RECLAIM_AFTER):
            raise RuntimeError("a sweep found something due; the measurement needs none")
    return (time.perf_counter() - started) / repetitions * 1e6


def sweep_cost(
    small: Seeded, large: Seeded, rounds: int, repetitions: int, progress: Progress
) -> SweepCost:
    """Interleaved rounds (small, large, then large, small), after a warm-up of each."""
    now = FakeClock(large.layout.start)
    services = {
        "small": CaseService(SqlUnitOfWorkFactory(small.engine), now, load_policy()),
        "large": CaseService(SqlUnitOfWorkFactory(large.engine), now, load_policy()),
    }
    for service in services.values():
        empty_sweep_us(service, max(repetitions // 5, 20))
    results: dict[str, list[float]] = {"small": [], "large": []}
    task = progress.add_task("sweep cost, nothing due: 1,000 vs all pending", total=rounds)
    for number in range(rounds):
        order = ["small", "large"] if number % 2 == 0 else ["large", "small"]
        for name in order:
            results[name].append(empty_sweep_us(services[name], repetitions))
        progress.advance(task)
    return SweepCost(
        results["small"],
        results["large"],
        small.pending,
        large.pending,
        repetitions,
        resources.load_average(),
    )


@dataclass
class Plan:
    what: str
    lines: list[str]
    planning_ms: float
    execution_ms: float

    @property
    def indexes(self) -> list[str]:
        return sorted(
            set(re.findall(r"(?:Index|Index Only) Scan using (\w+)", "\n".join(self.lines)))
        )

    @property
    def seq_scans(self) -> list[str]:
        return sorted(set(re.findall(r"Seq Scan on (\w+)", "\n".join(self.lines))))


def explain_claim(seeded: Seeded, as_of: datetime, what: str) -> Plan:
    """``EXPLAIN ANALYZE`` of the production claim statement (its compiled SQL text), rolled
    back so nothing stays claimed."""
    statement = Statements(seeded.engine.dialect).claim_due.sql
    params = {
        "as_of": as_of,
        "reclaim_before": as_of - RECLAIM_AFTER,
        "limit": BATCH,
        "claim_at": as_of,
        "claimer": "bench:explain",
    }
    with seeded.engine.connect() as connection:
        dbapi = connection.connection.dbapi_connection
        assert dbapi is not None
        cursor = dbapi.cursor()
        cursor.execute(f"EXPLAIN (ANALYZE, BUFFERS) {statement}", params)
        lines = [str(row[0]) for row in cursor.fetchall()]
        cursor.close()
        connection.rollback()
    return Plan(what, lines, _plan_ms(lines, "Planning Time"), _plan_ms(lines, "Execution Time"))


def _plan_ms(lines: list[str], label: str) -> float:
    return next((float(line.split(":")[1].split()[0]) for line in lines if label in line), 0.0)


@dataclass
class ServerTimes:
    """Medians of the server's own planning and execution times of the claim, nothing due."""

    small_planning_ms: float
    small_execution_ms: float
    large_planning_ms: float
    large_execution_ms: float


def server_times(small: Seeded, large: Seeded, rounds: int, per_round: int) -> ServerTimes:
    """``EXPLAIN ANALYZE`` of the claim on each database, interleaved: where an empty sweep's
    time goes on the server (a fresh plan per call, and the index probe)."""
    plans: dict[str, list[Plan]] = {"small": [], "large": []}
    as_of = large.layout.start
    for number in range(rounds):
        order = [("small", small), ("large", large)]
        for name, seeded in order if number % 2 == 0 else reversed(order):
            plans[name] += [explain_claim(seeded, as_of, name) for _ in range(per_round)]

    def med(name: str, attribute: str) -> float:
        return support.median([getattr(plan, attribute) for plan in plans[name]])

    return ServerTimes(
        med("small", "planning_ms"),
        med("small", "execution_ms"),
        med("large", "planning_ms"),
        med("large", "execution_ms"),
    )
