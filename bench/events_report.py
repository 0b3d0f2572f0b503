"""The events benchmark's tables: drains, the summary against the targets, latency, task run
times.
"""

from __future__ import annotations

import collections
import re
from collections.abc import Sequence

from rich.table import Table

from bench import support
from bench.events_drain import KINDS, Drain
from bench.events_latency import Latency, percentile
from bench.events_stack import Stack


def drains_table(drains: Sequence[Drain]) -> Table:
    table = Table(title="drains: published with the workers paused, then timed")
    for column in ("round", "kind", "units", "msgs", "done s", "units/s", "settled s", "settled/s"):
        table.add_column(column, justify="right")
    table.add_column("Redis cmds/unit")
    table.add_column("CPU ms/unit: main · children · postgres · redis · api")
    table.add_column("load 1/5/15")
    for d in drains:
        cpu = " · ".join(
            f"{d.cpu[p] / d.units * 1e3:.2f}"
            for p in ("worker main", "pool children", "postgres", "redis", "api")
        )
        table.add_row(
            str(d.round),
            d.kind,
            str(d.units),
            str(d.messages),
            f"{d.done_s:.2f}",
            f"{d.rate:,.0f}",
            f"{d.settled_s:.2f}",
            f"{d.settled_rate:,.0f}",
            f"{d.cpu['redis commands'] / d.units:.1f}",
            cpu,
            d.load,
        )
    return table


def summary_table(drains: Sequence[Drain]) -> tuple[Table, dict[str, dict[str, float]]]:
    table = Table(title="medians over rounds (ratio: per-round rate ÷ the same round's no-op rate)")
    for column in ("kind", "units/s", "÷ no-op", "range", "settled/s", "÷ no-op settled"):
        table.add_column(column, justify="right")
    figures: dict[str, dict[str, float]] = {}
    noop = {d.round: d for d in drains if d.kind == "noop"}
    for kind in KINDS:
        mine = [d for d in drains if d.kind == kind]
        if not mine:
            continue
        ratios = [d.rate / noop[d.round].rate for d in mine]
        settled = [d.settled_rate / noop[d.round].rate for d in mine]
        figures[kind] = {
            "rate": support.median([d.rate for d in mine]),
            "settled": support.median([d.settled_rate for d in mine]),
            "ratio": support.median(ratios),
            "settled_ratio": support.median(settled),
        }
        table.add_row(
            kind,
            f"{figures[kind]['rate']:,.0f}",
            f"{figures[kind]['ratio']:.1%}",
            f"{min(ratios):.0%}–{max(ratios):.0%}",
            f"{figures[kind]['settled']:,.0f}",
            f"{figures[kind]['settled_ratio']:.1%}",
        )
    return table, figures


def latency_table(latencies: Sequence[Latency]) -> Table:
    table = Table(
        title="latency at a fixed publishing pace (ms; ping: the broker and worker alone)"
    )
    for column in ("kind", "events/s", "events", "p50", "p90", "p99", "max"):
        table.add_column(column, justify="right")
    table.add_column("publish → transaction start p50 / p99")
    table.add_column("ping p50 / p99")
    table.add_column("load")
    for lat in latencies:
        ms = [v * 1e3 for v in lat.commit]
        started = [v * 1e3 for v in lat.started]
        pings = [v * 1e3 for v in lat.pings]
        table.add_row(
            lat.kind,
            f"{lat.rate:,.0f}",
            str(len(ms)),
            *(f"{percentile(ms, q):.0f}" for q in (0.5, 0.9, 0.99)),
            f"{max(ms):.0f}",
            f"{percentile(started, 0.5):.0f} / {percentile(started, 0.99):.0f}",
            f"{percentile(pings, 0.5):.1f} / {percentile(pings, 0.99):.1f}",
            lat.load,
        )
    return table


def task_runtimes(stack: Stack) -> str:
    """Tasks the workers ran by name, from their INFO log lines (count, median runtime)."""
    pattern = re.compile(r"Task (?P<name>[\w.]+)\[[0-9a-f-]+\] succeeded in (?P<s>[\d.e-]+)s")
    runtimes: dict[str, list[float]] = collections.defaultdict(list)
    for log in sorted(stack.folder.glob("worker-*.log")):
        for match in pattern.finditer(log.read_text(errors="replace")):
            runtimes[match["name"]].append(float(match["s"]))
    jobs = [
        int(match["count"])
        for log in sorted(stack.folder.glob("worker-*.log"))
        for match in _COALESCED_JOB.finditer(log.read_text(errors="replace"))
    ]
    coalesced = (
        f"; single events applied in {len(jobs)} coalesced jobs (events per job: median "
        f"{support.median(jobs):.0f}, max {max(jobs)}; {jobs.count(1)} alone)"
        if jobs
        else ""
    )
    return (
        "; ".join(
            f"{name} ×{len(values)} (median {support.median(values) * 1e3:.1f} ms, "
            f"total {sum(values):.1f} s)"
            for name, values in sorted(runtimes.items(), key=lambda item: -len(item[1]))
        )
        + coalesced
    )


#: The worker's line for a job of single-event messages applied together (tasks/coalesce.py).
_COALESCED_JOB = re.compile(r"coalesced job of (?P<count>\d+) aftersales\.ingest_event messages")
