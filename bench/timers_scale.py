"""Benchmark 3, timers at scale: a million pending timers in PostgreSQL, fired by the production
worker and beat, beside the naive way (one Celery countdown task per deadline).

One run: seed the timers (``bench.timers_seeding``); time a sweep with nothing due on 1,000 and on
``--timers`` timers (``bench.timers_sweep_cost``); start ``aftersales worker`` and ``aftersales
beat`` on a private Redis (``bench.timers_deployment``), sampling their memory; fire a steady
stream and then a burst due at one instant (``bench.timers_phases``); run the naive countdown
tasks (``bench.naive_countdown``); report (``bench.timers_report``).

    python -m bench.timers_scale                      # defaults: 1,000,000 timers, ~10 min
    python -m bench.timers_scale --timers 100000 --burst 20000 --naive 5000   # a smaller run
"""

from __future__ import annotations

import argparse
import contextlib
import tempfile
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

from rich.console import Console
from rich.progress import Progress

from bench import naive_countdown, resources, support
from bench.timers_deployment import WorkerWork, deployment
from bench.timers_phases import burst, duplicate_firings, steady_state
from bench.timers_report import (
    Run,
    memory_table,
    phases_table,
    plans_table,
    side_by_side,
    summary,
    sweep_table,
    work_table,
)
from bench.timers_seeding import SMALL, Layout, seed
from bench.timers_sweep_cost import explain_claim, server_times, sweep_cost
from persistence.db import dispose_engine


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
        redis_url = stack.enter_context(resources.private_redis(folder / "redis"))
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
            roles = {"beat": deploy.beat.pid, "worker": deploy.worker.pid}
            work: dict[str, tuple[WorkerWork, float]] = {}
            with resources.RssSampler(roles) as sampler:

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
    console.print(resources.load_average())
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
    console.print(f"{time.monotonic() - started:.0f} s in all; {resources.load_average()}")
    console.print(summary(run))


if __name__ == "__main__":
    main()
