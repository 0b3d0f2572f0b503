"""The timers benchmark's report: one run's figures, its tables and its SUMMARY line."""

from __future__ import annotations

import argparse
import statistics
from dataclasses import dataclass

from rich.table import Table

from bench import naive_countdown, resources, support
from bench.timers_deployment import WorkerWork
from bench.timers_phases import Burst, Steady
from bench.timers_seeding import Seeded
from bench.timers_sweep_cost import Plan, ServerTimes, SweepCost

TARGET_RSS_MB = 150
TARGET_BURST_S = 60.0
TARGET_P99_MS = 2_000
#: Sweep cost with 1,000,000 pending within this factor of the cost with 1,000 counts as flat.
FLAT_WITHIN = 1.5


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
    memory: dict[str, resources.Memory]
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
    worker = run.memory.get("worker", resources.Memory())
    child = run.memory.get("worker child", resources.Memory())
    beat = run.memory.get("beat", resources.Memory())

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
    worker = run.memory.get("worker", resources.Memory())
    beat = run.memory.get("beat", resources.Memory())
    child = run.memory.get("worker child", resources.Memory())
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
