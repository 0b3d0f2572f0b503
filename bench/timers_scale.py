"""Benchmark 3, timers at scale: a million pending timers in PostgreSQL, fired by the production
worker and beat, beside the naive way (one Celery countdown task per deadline).

One run, in this order (BENCHMARKS.md section 3 has the method and the results):

1. **Seed** a throwaway database (migrated to head) with ``--timers`` approved return cases, each
   with its pending ``return_shipment`` timer (``expire_return`` closes the case), set-based
   (``INSERT ... SELECT ... generate_series``). ``--burst`` of them fall due at one instant a day
   ahead, ``--rate`` x ``--steady-seconds`` are kept for the steady-state phase, the rest fall
   due over the following four weeks. A second database gets 1,000 such timers.
2. **Sweep cost with nothing due**: ``CaseService.sweep_timers`` (the claim statement and its
   commit, what a sweep task does when nothing is due) on the 1,000-timer and the 1,000,000-timer
   database, in interleaved rounds; and ``EXPLAIN ANALYZE`` of the claim statement, nothing due
   and with the burst due.
3. **The deployment**: a private ``redis-server``, ``aftersales worker -c N`` (prefork on Redis)
   and ``aftersales beat``, the production commands, sharing a ``FileClock`` file with this
   process. Resident memory of beat, the worker's main process and its pool children is sampled
   every 0.5 s from ``/proc/<pid>/status`` for the whole run.
4. **Steady state** on the real clock (the clock file empty): the steady timers are moved to fall
   due ``--rate`` per second for ``--steady-seconds``; lateness is the sweeper's own
   ``lateness_ms`` (fired_at - due_at).
5. **Burst**: the clock file is moved one second past the burst instant; the wall time until every
   burst timer is ``fired`` (read from the timers table), or ``--burst-timeout``.
6. **Naive**: ``bench/naive_countdown.py`` with ``--naive`` countdown tasks, for the production
   visibility timeout and a short one, side by side.

    python -m bench.timers_scale                      # defaults: 1,000,000 timers, ~10 min
    python -m bench.timers_scale --timers 100000 --burst 20000 --naive 5000   # a smaller run
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from rich.console import Console
from rich.progress import Progress
from rich.table import Table
from sqlalchemy.engine import Engine

from bench import naive_countdown, support
from config.policy import load_policy
from config.settings import BrokerSettings, DatabaseSettings, Settings, WorkerSettings
from persistence.db import dispose_engine, make_engine
from persistence.statements import Statements
from persistence.unit_of_work import SqlUnitOfWorkFactory
from tasks.app import create_app
from workflow.clock import FakeClock, FileClock
from workflow.service import CaseService

ROOT = Path(__file__).resolve().parents[1]
SMALL = 1_000
#: Rows per seeding statement: the progress bar moves, and no statement runs for minutes.
SEED_CHUNK = 50_000
#: What the production sweep task passes (``WorkerSettings`` defaults).
BATCH = WorkerSettings().timer_sweep_batch
RECLAIM_AFTER = timedelta(seconds=WorkerSettings().timer_reclaim_after_s)
#: Celery's line for a task that returned (worker log at INFO).
_TASK_DONE = re.compile(
    r"Task (aftersales\.\w+)\[[0-9a-f-]+\] (?:succeeded|raised[^\n]*?) in ([\d.e-]+)s"
)
#: Celery's line for a message dropped unrun because its ``expires`` passed while it queued.
_EXPIRED = re.compile(r"Discarding revoked task: (aftersales\.\w+)\[")

TARGET_RSS_MB = 150
TARGET_BURST_S = 60.0
TARGET_P99_MS = 2_000
#: Sweep cost with 1,000,000 pending within this factor of the cost with 1,000 counts as flat.
FLAT_WITHIN = 1.5


# -- seeding ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Layout:
    """Which seeded timers fall due when, by position among the copies (0-based)."""

    timers: int
    burst: int
    steady: int
    #: Real time when the run started; everything is placed relative to it.
    start: datetime

    @property
    def burst_at(self) -> datetime:
        return self.start + timedelta(days=1)

    @property
    def later_from(self) -> datetime:
        return self.start + timedelta(days=2)

    @property
    def steady_parked_at(self) -> datetime:
        """Where the steady timers wait until their phase moves them (after every other)."""
        return self.start + timedelta(days=32)


@dataclass
class Seeded:
    database: support.Database
    engine: Engine
    #: Case ids of the copies: burst ones are first_case .. first_case + burst - 1, then steady.
    first_case: int
    layout: Layout
    pending: int
    seconds: float

    def burst_range(self) -> tuple[int, int]:
        return self.first_case, self.first_case + self.layout.burst - 1

    def steady_range(self) -> tuple[int, int]:
        first = self.first_case + self.layout.burst
        return first, first + self.layout.steady - 1


_COPIED_CASE = support._CASE_COLUMNS.replace("order_id", "'o-' || CAST(n AS TEXT)")


def seed(database: support.Database, layout: Layout, progress: Progress, name: str) -> Seeded:
    """One case approved through the service (its ``return_shipment`` timer armed), then
    ``layout.timers`` set-based copies of its case row, each with a pending timer of its own.

    Only cases and timers are copied (not the template's log rows and item claims): the sweep
    reads neither, and firing needs only the case row.
    """
    started = time.monotonic()
    engine = make_engine(database.url)
    service = CaseService(
        SqlUnitOfWorkFactory(engine), FakeClock(layout.start - timedelta(hours=1)), load_policy()
    )
    application = support.application("o-template")
    application["delivered_at"] = (layout.start - timedelta(days=2)).isoformat()
    application["payment"]["paid_at"] = (layout.start - timedelta(days=5)).isoformat()
    template = service.submit(application).case.id
    assert template is not None
    service.fire(template, "approve", support.MERCHANT)
    with engine.begin() as connection:
        # The template's own timer would be one more pending timer than asked for.
        connection.execute(
            sa.text("UPDATE timers SET status = 'cancelled' WHERE case_id = :t"), {"t": template}
        )
    task = progress.add_task(f"seed {name}: cases + pending timers", total=layout.timers)
    later_span_s = 28 * 86_400
    for chunk_start in range(0, layout.timers, SEED_CHUNK):
        count = min(SEED_CHUNK, layout.timers - chunk_start)
        with engine.begin() as connection:
            before = connection.execute(sa.text("SELECT max(id) FROM cases")).scalar_one()
            connection.execute(
                sa.text(
                    f"INSERT INTO cases ({support._CASE_COLUMNS}) SELECT {_COPIED_CASE} "
                    "FROM cases, generate_series(CAST(:lo AS bigint), CAST(:hi AS bigint)) AS n "
                    "WHERE cases.id = :t ORDER BY n"
                ),
                {"lo": chunk_start + 1, "hi": chunk_start + count, "t": template},
            )
            # Position i of a copy is its id's offset from the first copy (ids come from one
            # sequence in this one session; ``_check_layout`` verifies). Later timers are spread
            # over four weeks in an order unrelated to their ids, as real deadlines are.
            connection.execute(
                sa.text(
                    'INSERT INTO timers (case_id, kind, "trigger", state, version, due_at, '
                    "status, created_at) "
                    'SELECT c.id, t.kind, t."trigger", t.state, t.version, '
                    "CASE WHEN c.id - :t - 1 < :burst THEN CAST(:burst_at AS timestamptz) "
                    "WHEN c.id - :t - 1 < :burst + :steady THEN CAST(:parked AS timestamptz) "
                    "ELSE CAST(:later_from AS timestamptz) + "
                    "((c.id * 7919) % :timers) * (:span / :timers) * interval '1 second' END, "
                    "'pending', t.created_at "
                    "FROM cases c, timers t WHERE c.id > :before AND t.case_id = :t "
                    "AND t.kind = 'return_shipment' "
                    "ORDER BY c.id"
                ),
                {
                    "t": template,
                    "before": before,
                    "burst": layout.burst,
                    "steady": layout.steady,
                    "burst_at": layout.burst_at,
                    "later_from": layout.later_from,
                    "parked": layout.steady_parked_at,
                    "timers": layout.timers,
                    "span": float(later_span_s),
                },
            )
        progress.update(task, completed=chunk_start + count)
    vacuum = progress.add_task(f"seed {name}: VACUUM ANALYZE", total=1)
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as connection:
        connection.execute(sa.text("VACUUM ANALYZE cases"))
        connection.execute(sa.text("VACUUM ANALYZE timers"))
    progress.update(vacuum, completed=1)
    with engine.connect() as connection:
        first = connection.execute(
            sa.text("SELECT min(id) FROM cases WHERE id > :t"), {"t": template}
        ).scalar_one()
        pending = connection.execute(
            sa.text("SELECT count(*) FROM timers WHERE status = 'pending'")
        ).scalar_one()
    seeded = Seeded(database, engine, int(first), layout, int(pending), time.monotonic() - started)
    _check_layout(seeded)
    return seeded


def _check_layout(seeded: Seeded) -> None:
    """The burst and steady timers are where the phases will look for them."""
    layout = seeded.layout
    if seeded.pending != layout.timers:
        raise RuntimeError(f"seeded {seeded.pending} pending timers, wanted {layout.timers}")
    groups = {
        "burst": (seeded.burst_range(), layout.burst, layout.burst_at),
        "steady": (seeded.steady_range(), layout.steady, layout.steady_parked_at),
    }
    with seeded.engine.connect() as connection:
        for name, ((lo, hi), wanted, due_at) in groups.items():
            found = connection.execute(
                sa.text(
                    "SELECT count(*), min(case_id), max(case_id) FROM timers "
                    "WHERE due_at = :due_at AND status = 'pending'"
                ),
                {"due_at": due_at},
            ).one()
            expected = (wanted, lo, hi) if wanted else (0, None, None)
            if tuple(found) != expected:
                raise RuntimeError(f"{name} timers are {tuple(found)}, expected {expected}")


# -- sweep cost with nothing due -------------------------------------------------------------


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
        support.load_average(),
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


# -- the deployment: aftersales worker + aftersales beat --------------------------------------


@dataclass
class Process:
    name: str
    process: subprocess.Popen[bytes]
    log: Path


@dataclass
class Deployment:
    worker: Process
    beat: Process
    clock: FileClock
    app: Any
    ping_dir: Path
    concurrency: int

    def wait_ready(self, timeout_s: float = 120.0) -> None:
        """Until the worker has run a ping (its pool is up and consuming)."""
        token = uuid.uuid4().hex
        self.app.send_task("aftersales.ping", args=[token])
        deadline = time.monotonic() + timeout_s
        while not (self.ping_dir / token).exists():
            for process in (self.worker, self.beat):
                if process.process.poll() is not None:
                    raise RuntimeError(f"{process.name} exited; see {process.log}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"the worker did not run a ping within {timeout_s:.0f} s")
            time.sleep(0.1)

    def log_offset(self) -> int:
        return self.worker.log.stat().st_size

    def work_since(self, offset: int) -> WorkerWork:
        """What the worker ran (and dropped) since ``offset`` in its log: Celery logs each task's
        run time at INFO, and each expired message it discards."""
        with self.worker.log.open("rb") as handle:
            handle.seek(offset)
            text = handle.read().decode(errors="replace")
        work = WorkerWork()
        for name, seconds in _TASK_DONE.findall(text):
            work.runs.setdefault(name, []).append(float(seconds))
        for name in _EXPIRED.findall(text):
            work.expired[name] = work.expired.get(name, 0) + 1
        return work


@dataclass
class WorkerWork:
    """Task run times by task name, and expired messages dropped, in one phase."""

    runs: dict[str, list[float]] = field(default_factory=dict)
    expired: dict[str, int] = field(default_factory=dict)

    def busy_s(self) -> float:
        return sum(sum(times) for times in self.runs.values())

    def describe(self, wall_s: float, concurrency: int) -> str:
        """Per task: runs, seconds in all and share of the pool's time."""
        capacity = wall_s * concurrency
        parts = [
            f"{name.removeprefix('aftersales.')} {len(times):,}× {sum(times):.0f} s "
            f"({sum(times) / capacity:.0%})"
            for name, times in sorted(self.runs.items(), key=lambda item: -sum(item[1]))
        ]
        parts += [
            f"{count:,} {name.removeprefix('aftersales.')} expired unrun"
            for name, count in self.expired.items()
        ]
        return "; ".join(parts)


@contextlib.contextmanager
def deployment(
    database_url: str, redis_url: str, folder: Path, concurrency: int
) -> Iterator[Deployment]:
    """``aftersales worker -c N`` and ``aftersales beat`` (production commands and defaults;
    prefork on Redis) on the run's database, broker and clock file; stopped afterwards."""
    folder.mkdir(parents=True, exist_ok=True)
    clock_file = folder / "clock"
    clock_file.write_text("")  # empty: the system time, until the burst moves it
    ping_dir = folder / "pings"
    env = {key: value for key, value in os.environ.items() if not key.startswith("AFTERSALES_")}
    env.update(
        {
            "AFTERSALES_DATABASE_URL": database_url,
            "AFTERSALES_BROKER_URL": redis_url,
            "AFTERSALES_CLOCK_FILE": str(clock_file),
            "AFTERSALES_PING_DIR": str(ping_dir),
        }
    )
    aftersales = str(Path(sys.executable).with_name("aftersales"))
    settings = Settings(
        database=DatabaseSettings(url=database_url),
        broker=BrokerSettings(url=redis_url),
        worker=WorkerSettings(ping_dir=ping_dir),
        clock_file=clock_file,
    )
    app = create_app(settings)
    processes: list[Process] = []

    def start(name: str, *arguments: str) -> Process:
        log = folder / f"{name}.log"
        with log.open("wb") as out:
            process = subprocess.Popen(
                [aftersales, *arguments],
                cwd=folder,  # beat's schedule file goes to ./var here
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        started = Process(name, process, log)
        processes.append(started)
        return started

    try:
        worker = start("worker", "worker", "--concurrency", str(concurrency))
        beat = start("beat", "beat")
        yield Deployment(worker, beat, FileClock(str(clock_file)), app, ping_dir, concurrency)
    finally:
        for process in processes:
            support.stop_group(process.process)
        app.close()


# -- phases ----------------------------------------------------------------------------------


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
    return Steady(rate, seconds, total, fired, lateness, support.load_average())


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
        support.load_average(),
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


# -- the run ---------------------------------------------------------------------------------


def _mb(kib: float) -> str:
    return f"{kib / 1024:.1f} MB"


def _mark(ok: bool) -> str:
    return "✓" if ok else "✗"


@dataclass
class Run:
    args: argparse.Namespace
    large: Seeded
    small: Seeded
    cost: SweepCost
    server: ServerTimes
    plans: list[Plan]
    #: What the worker ran in each phase, and the phase's wall time.
    work: dict[str, tuple[WorkerWork, float]]
    memory: dict[str, support.Memory]
    steady: Steady
    burst: Burst
    closed_cases: int
    duplicate_cases: int
    naive: list[naive_countdown.NaiveResult]

    def rss_ok(self) -> bool:
        return all(m.max_kib < TARGET_RSS_MB * 1024 for m in self.memory.values())

    def flat(self) -> bool:
        return self.cost.ratio <= FLAT_WITHIN

    def burst_ok(self) -> bool:
        return self.burst.all_fired_s is not None and self.burst.all_fired_s <= TARGET_BURST_S

    def steady_ok(self) -> bool:
        return self.steady.fired == self.steady.timers and self.steady.p99 <= TARGET_P99_MS


def sweep_table(run: Run) -> Table:
    cost = run.cost
    table = Table(
        title=f"Sweep with nothing due ({cost.repetitions} sweeps per round; {cost.load})"
    )
    for column in ("database", "pending timers", "µs per sweep (median)", "by round"):
        table.add_column(column, justify="right")
    for name, pending, values in (
        ("small", cost.small_pending, cost.small_us),
        ("large", cost.large_pending, cost.large_us),
    ):
        table.add_row(
            name,
            f"{pending:,}",
            f"{support.median(values):.0f}",
            " ".join(f"{v:.0f}" for v in values),
        )
    table.add_row(
        "large ÷ small",
        "",
        f"{cost.ratio:.2f} {_mark(run.flat())}",
        " ".join(f"{r:.2f}" for r in cost.ratios),
    )
    times = run.server
    table.add_row(
        "server: planning / execution ms (median)",
        "",
        f"small {times.small_planning_ms:.3f} / {times.small_execution_ms:.3f}",
        f"large {times.large_planning_ms:.3f} / {times.large_execution_ms:.3f}",
    )
    return table


def plans_table(run: Run) -> Table:
    table = Table(title="EXPLAIN ANALYZE of the claim statement on the large database")
    for column in ("case", "execution ms", "index scans", "sequential scans"):
        table.add_column(column)
    for plan in run.plans:
        table.add_row(
            plan.what,
            f"{plan.execution_ms:.3f}",
            ", ".join(plan.indexes),
            ", ".join(plan.seq_scans) or "none",
        )
    return table


def side_by_side(run: Run) -> Table:
    """Database timers beside the naive countdown tasks: one column each."""
    table = Table(title="Timers at scale: database timers beside Celery countdown tasks")
    table.add_column("")
    table.add_column(f"database timers, worker -c {run.args.concurrency} + beat", justify="right")
    for result in run.naive:
        table.add_column(f"countdown tasks, {result.label}", justify="right")
    worker = run.memory.get("worker", support.Memory())
    child = run.memory.get("worker child", support.Memory())
    beat = run.memory.get("beat", support.Memory())

    def row(name: str, ours: str, naive: list[str]) -> None:
        table.add_row(name, ours, *naive)

    row(
        "pending",
        f"{run.large.pending:,} rows",
        [
            f"{r.tasks:,} tasks (countdown {r.countdown_s[0]:.0f}-{r.countdown_s[1]:.0f} s)"
            for r in run.naive
        ],
    )
    row(
        "worker main RSS: start → max → final",
        f"{_mb(worker.first_kib)} → {_mb(worker.max_kib)} → {_mb(worker.last_kib)}",
        [
            f"{_mb(r.rss_before_kib)} → {_mb(r.rss_max_kib)} → {_mb(r.rss_final_kib)}"
            for r in run.naive
        ],
    )
    row(
        "worker RSS with the most pending",
        f"{_mb(run.memory['worker'].by_phase.get('idle', 0))} (idle phase max)",
        [f"{_mb(r.rss_pending_kib)} holding {r.peak_held:,}" for r in run.naive],
    )
    row(
        "worker memory per pending timer",
        f"none: growth over the run {_mb(worker.max_kib - worker.first_kib)}, from firing",
        [f"{r.kib_per_pending_task * 1024:,.0f} B" for r in run.naive],
    )
    row(
        "→ for 1,000,000 pending",
        "flat: the rows stay in PostgreSQL",
        [f"≈ {r.kib_per_pending_task * 1_000_000 / 1024 / 1024:.1f} GB" for r in run.naive],
    )
    row("largest pool child, max", _mb(child.max_kib), [_mb(r.child_max_kib) for r in run.naive])
    row(
        "beat RSS: max → final",
        f"{_mb(beat.max_kib)} → {_mb(beat.last_kib)}",
        ["-" for _ in run.naive],
    )
    row(
        "executions",
        f"{run.closed_cases:,} timers fired, {run.duplicate_cases} cases closed twice",
        [f"{r.executions:,} runs of {r.executed_ids:,} ids" for r in run.naive],
    )
    row(
        "duplicate executions",
        f"{run.duplicate_cases}",
        [f"{r.duplicates:,}" for r in run.naive],
    )
    row("load at the end", run.burst.load, [r.load for r in run.naive])
    return table


def phases_table(run: Run) -> Table:
    steady, burst_ = run.steady, run.burst
    table = Table(title="Firing")
    for column in ("phase", "timers", "result", "target", "load"):
        table.add_column(column)
    at_least = "" if steady.complete else "≥ "
    table.add_row(
        f"steady: {steady.rate:.0f}/s due for {steady.seconds:.0f} s, real clock",
        f"{steady.fired:,} of {steady.timers:,} fired"
        + ("" if steady.complete else " (the rest counted as late as the deadline, cancelled)"),
        f"lateness p50 {at_least}{steady.p50:.0f} ms, p99 {at_least}{steady.p99:.0f} ms, "
        f"max {at_least}{steady.max:.0f} ms",
        f"p99 ≤ {TARGET_P99_MS} ms {_mark(run.steady_ok())}",
        steady.load,
    )
    done = (
        f"all fired in {burst_.all_fired_s:.1f} s"
        if burst_.all_fired_s is not None
        else f"{burst_.fired:,} fired in {burst_.elapsed_s:.0f} s (timeout)"
    )
    table.add_row(
        f"burst: due at one instant, worker -c {burst_.concurrency}",
        f"{burst_.fired:,} of {burst_.timers:,} fired",
        f"{done}; {burst_.rate:.0f} timers/s; outbox rows not yet completed: "
        f"{burst_.outbox_pending:,}",
        f"≤ {TARGET_BURST_S:.0f} s {_mark(run.burst_ok())}",
        burst_.load,
    )
    idle = run.work["idle"][0].runs.get("aftersales.sweep_timers", [])
    if idle:
        table.add_row(
            "idle: sweep tasks run by the worker (nothing due)",
            f"{len(idle)} sweeps",
            f"p50 {statistics.median(idle) * 1000:.1f} ms, max {max(idle) * 1000:.1f} ms "
            "(Celery's 'succeeded in')",
            "",
            "",
        )
    return table


def work_table(run: Run) -> Table:
    """Where the worker pool's time went in each phase (from its log)."""
    table = Table(title=f"Worker pool time by task (-c {run.args.concurrency}; from its log)")
    for column in ("phase", "wall s", "pool busy", "by task: runs, seconds (share of pool)"):
        table.add_column(column)
    for name, (work, wall) in run.work.items():
        table.add_row(
            name,
            f"{wall:.0f}",
            f"{work.busy_s() / (wall * run.args.concurrency):.0%}",
            work.describe(wall, run.args.concurrency),
        )
    return table


def memory_table(run: Run) -> Table:
    phases = ["idle", "steady", "burst", "after"]
    table = Table(title="Resident memory (VmRSS) by phase, max")
    table.add_column("process")
    for phase in phases:
        table.add_column(phase, justify="right")
    table.add_column(f"target < {TARGET_RSS_MB} MB")
    for role, memory in sorted(run.memory.items()):
        table.add_row(
            role,
            *[_mb(memory.by_phase.get(phase, 0)) for phase in phases],
            _mark(memory.max_kib < TARGET_RSS_MB * 1024),
        )
    return table


def summary(run: Run) -> str:
    worker = run.memory.get("worker", support.Memory())
    beat = run.memory.get("beat", support.Memory())
    child = run.memory.get("worker child", support.Memory())
    burst_ = run.burst
    burst_text = (
        f"{burst_.timers:,} due at once all fired in {burst_.all_fired_s:.1f} s"
        if burst_.all_fired_s is not None
        else f"{burst_.fired:,} of {burst_.timers:,} due at once fired in {burst_.elapsed_s:.0f} s"
    )
    naive = "; ".join(
        f"naive {r.label}: {r.kib_per_pending_task:.2f} KiB/pending task, "
        f"{r.duplicates:,} duplicates" for r in run.naive
    )  # fmt: skip
    return (
        f"SUMMARY timers_scale: {run.large.pending:,} pending; "
        f"RSS max worker {_mb(worker.max_kib)}, child {_mb(child.max_kib)}, beat "
        f"{_mb(beat.max_kib)} {_mark(run.rss_ok())}; empty sweep {run.cost.ratio:.2f}x at "
        f"{run.large.pending:,} vs {run.small.pending:,} {_mark(run.flat())}; {burst_text} "
        f"(-c {burst_.concurrency}) {_mark(run.burst_ok())}; steady {run.steady.rate:.0f}/s: "
        f"{run.steady.fired:,}/{run.steady.timers:,} fired, lateness p99 "
        f"{'' if run.steady.complete else '≥ '}{run.steady.p99:.0f} ms "
        f"{_mark(run.steady_ok())}; duplicates {run.duplicate_cases}"
        + (f"; {naive}" if naive else "")
    )


def _wait(progress: Progress, description: str, seconds: float) -> None:
    """A measurement window (processes idle, memory sampled), shown as a bar."""
    task = progress.add_task(description, total=seconds)
    started = time.monotonic()
    while (elapsed := time.monotonic() - started) < seconds:
        progress.update(task, completed=elapsed)
        time.sleep(0.5)
    progress.update(task, completed=seconds)


def measure(args: argparse.Namespace, console: Console) -> Run:
    start = datetime.now(UTC).replace(microsecond=0)
    steady_timers = int(args.rate * args.steady_seconds)
    folder = Path(tempfile.mkdtemp(prefix="aftersales-timers-"))
    server_url = support.postgres_url(args.server)
    with contextlib.ExitStack() as stack:
        bar = stack.enter_context(support.progress(console))
        redis_url = stack.enter_context(support.private_redis(folder / "redis"))
        large_db = stack.enter_context(support.throwaway_database("postgres", server_url))
        small_db = stack.enter_context(support.throwaway_database("postgres", server_url))
        large = seed(large_db, Layout(args.timers, args.burst, steady_timers, start), bar, "large")
        small = seed(small_db, Layout(min(SMALL, args.timers), 0, 0, start), bar, "small")
        cost = sweep_cost(small, large, args.rounds, args.repetitions, bar)
        server = server_times(small, large, args.rounds, 30)
        plans = [
            explain_claim(large, start, "nothing due"),
            explain_claim(
                large, large.layout.burst_at + timedelta(seconds=1), f"{args.burst:,} due at once"
            ),
        ]
        dispose_engine(small_db.url)
        with deployment(large_db.url, redis_url, folder / "deploy", args.concurrency) as deploy:
            deploy.wait_ready()
            roles = {"beat": deploy.beat.process.pid, "worker": deploy.worker.process.pid}
            work: dict[str, tuple[WorkerWork, float]] = {}
            with support.RssSampler(roles) as sampler:

                @contextlib.contextmanager
                def phase(name: str) -> Iterator[None]:
                    sampler.phase = name
                    offset, started = deploy.log_offset(), time.monotonic()
                    yield
                    work[name] = (deploy.work_since(offset), time.monotonic() - started)

                with phase("idle"):
                    _wait(bar, f"idle: {large.pending:,} pending, nothing due", args.idle_seconds)
                with phase("steady"):
                    steady = steady_state(large, args.rate, args.steady_seconds, bar)
                with phase("burst"):
                    burst_ = burst(large, deploy, args.burst_timeout, bar)
                with phase("after"):
                    _wait(bar, "after the burst", 10)
            memory = sampler.memory
        closed, duplicated = duplicate_firings(large)
        dispose_engine(large_db.url)
        naive = (
            naive_countdown.run(
                redis_url,
                folder,
                tasks=args.naive,
                visibilities=[naive_countdown.PRODUCTION_VISIBILITY_S, args.short_visibility],
                countdown_s=(args.naive_countdown_min, args.naive_countdown_max),
                concurrency=args.concurrency,
                progress=bar,
                grace_s=15.0,
            )
            if args.naive
            else []
        )
    return Run(
        args,
        large,
        small,
        cost,
        server,
        plans,
        work,
        memory,
        steady,
        burst_,
        closed,
        duplicated,
        naive,
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--timers", type=int, default=1_000_000, help="pending timers seeded")
    parser.add_argument("--burst", type=int, default=100_000, help="of them due at one instant")
    parser.add_argument("--rate", type=float, default=200.0, help="steady state: due per second")
    parser.add_argument("--steady-seconds", type=float, default=60.0)
    parser.add_argument("--burst-timeout", type=float, default=180.0)
    support.add_concurrency_option(parser)
    parser.add_argument("--rounds", type=int, default=7, help="sweep cost: interleaved rounds")
    parser.add_argument("--repetitions", type=int, default=300, help="sweeps per round")
    parser.add_argument("--idle-seconds", type=float, default=15.0)
    parser.add_argument("--naive", type=int, default=50_000, help="countdown tasks (0: skip)")
    parser.add_argument("--naive-countdown-min", type=float, default=120.0)
    parser.add_argument("--naive-countdown-max", type=float, default=180.0)
    parser.add_argument("--short-visibility", type=int, default=30)
    parser.add_argument("--server", help="PostgreSQL server URL (default: the tests' server)")
    parser.add_argument("--plans", action="store_true", help="print the EXPLAIN ANALYZE plans")
    args = parser.parse_args(argv)
    if args.burst + args.rate * args.steady_seconds > args.timers:
        parser.error("--burst plus --rate x --steady-seconds must not exceed --timers")
    console = support.console()
    support.print_machine(console, support.machine(support.postgres_url(args.server)))
    console.print(support.load_average())
    started = time.monotonic()
    run = measure(args, console)
    console.print(f"seeded {run.large.pending:,} timers in {run.large.seconds:.0f} s")
    console.print(sweep_table(run))
    console.print(plans_table(run))
    if args.plans:
        for plan in run.plans:
            console.print(f"[bold]{plan.what}[/]\n" + "\n".join(plan.lines))
    console.print(phases_table(run))
    console.print(work_table(run))
    console.print(memory_table(run))
    console.print(side_by_side(run))
    if run.naive:
        console.print(naive_countdown.summary(run.naive))
    console.print(f"{time.monotonic() - started:.0f} s in all; {support.load_average()}")
    console.print(summary(run))


if __name__ == "__main__":
    main()
