"""Fault injection, long run: Redis and PostgreSQL outages, two beats, floods of duplicate and
reordered events.

The mixed cases of ``bench.chaos_driver`` run while a fault thread alternates a Redis
``SHUTDOWN NOSAVE`` (restarted after ``--redis-down`` s) and ``pg_terminate_backend`` of the
workers' sessions; two beats sweep at once; events are sent up to ``--copies`` times, some
reordered. Nobody restarts a worker or a beat: each must reconnect by itself. At the end,
``bench.chaos_checks.verify``.

    python -m bench.chaos_outages                      # 300 cases, 6 Redis restarts, 10 drops
    python -m bench.chaos_outages --cases 60 --redis-restarts 1 --pg-drops 2   # a quick look
"""

from __future__ import annotations

import argparse
import random
import time
from collections.abc import Callable
from dataclasses import dataclass

from rich.table import Table

from bench import chaos_checks, chaos_driver, support
from bench import chaos_common as chaos


@dataclass
class OutageStats:
    redis_restarts: int = 0
    redis_down_s: float = 0.0
    pg_drops: int = 0
    pg_sessions_ended: int = 0


class Outages:
    """Alternates Redis restarts and PostgreSQL session drops (one per call)."""

    def __init__(
        self,
        run: chaos.Deployment,
        redis_restarts: int,
        pg_drops: int,
        down_s: tuple[float, float],
        rng: random.Random,
        on_outage: Callable[[int], None],
    ) -> None:
        self.run = run
        self.wanted = (redis_restarts, pg_drops)
        self.down_s = down_s
        self.rng = rng
        self.on_outage = on_outage
        self.stats = OutageStats()
        self._turn = 0

    @property
    def remaining(self) -> int:
        redis_left = max(0, self.wanted[0] - self.stats.redis_restarts)
        return redis_left + max(0, self.wanted[1] - self.stats.pg_drops)

    def __call__(self) -> None:
        self._turn += 1
        redis_due = self.stats.redis_restarts < self.wanted[0]
        pg_due = self.stats.pg_drops < self.wanted[1]
        if redis_due and (self._turn % 2 or not pg_due):
            self._restart_redis()
        else:
            self._drop_postgres()
        self.on_outage(self.stats.redis_restarts + self.stats.pg_drops)

    def _restart_redis(self) -> None:
        self.run.redis.shutdown_nosave()
        down = self.rng.uniform(*self.down_s)
        time.sleep(down)  # the outage itself, not a synchronisation
        self.run.redis.start()
        self.stats.redis_restarts += 1
        self.stats.redis_down_s += down

    def _drop_postgres(self) -> None:
        ended = chaos.drop_sessions(self.run.database_url)
        self.stats.pg_drops += 1
        self.stats.pg_sessions_ended += ended


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--postgres-url", default=None)
    parser.add_argument("--cases", type=int, default=300)
    parser.add_argument("--waves", type=int, default=5)
    parser.add_argument("--workers", type=int, default=3)
    parser.add_argument("--concurrency", type=int, default=2)
    parser.add_argument("--beats", type=int, default=2)
    parser.add_argument("--sweep-batch", type=int, default=3)
    parser.add_argument("--redis-restarts", type=int, default=6)
    parser.add_argument("--pg-drops", type=int, default=10)
    parser.add_argument("--fault-every", type=float, nargs=2, default=(4.0, 10.0))
    parser.add_argument("--redis-down", type=float, nargs=2, default=(1.0, 5.0))
    parser.add_argument("--copies", type=int, default=3)
    parser.add_argument("--reorder", type=float, default=0.3)
    parser.add_argument("--resend-after", type=float, default=20.0)
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args(argv)

    console = support.console()
    server_url = support.postgres_url(args.postgres_url)
    support.print_machine(console, support.machine(server_url))
    rng = random.Random(args.seed)
    started = time.monotonic()
    extra_env = {
        "AFTERSALES_TIMER_SWEEP_INTERVAL_S": "0.2",
        "AFTERSALES_TIMER_SWEEP_BATCH": str(args.sweep_batch),
    }
    with chaos.deployment(server_url, extra_env) as run, support.progress(console) as bars:
        for _ in range(args.workers):
            run.add_worker(args.concurrency)
        for _ in range(args.beats):
            run.add_beat()
        run.wait_ready()
        terminal = bars.add_task("cases terminal", total=args.cases)
        planned = args.redis_restarts + args.pg_drops
        outage_bar = bars.add_task("outages", total=planned)
        outages = Outages(
            run,
            args.redis_restarts,
            args.pg_drops,
            tuple(args.redis_down),
            rng,
            lambda n: bars.update(outage_bar, completed=n),
        )
        flood = chaos_driver.Flood(args.copies, args.reorder, args.resend_after)
        driver = chaos_driver.Driver(
            run,
            args.cases,
            args.waves,
            flood,
            rng,
            lambda done, total: bars.update(terminal, completed=done, total=total),
        )
        error: Exception | None = None
        with chaos.AtRandomMoments(tuple(args.fault_every), rng, outages):
            try:
                driver.drive(keep_going=lambda: outages.remaining > 0)
            except TimeoutError as stuck:
                error = stuck
        chaos_checks.wait_settled(run)
        found = chaos_checks.verify(run)
        exits = [
            f"{slot.log.name}: {slot.exits()}"
            for slot in run.workers + run.beats
            if not slot.alive()
        ]
        run.keep_folder = not found.ok or error is not None or bool(exits)
        reconnects = sum(
            slot.log.read_text(errors="replace").count("Connected to redis://")
            for slot in run.workers
        )
        elapsed = time.monotonic() - started
        load = chaos_checks.load_average()

    stats = outages.stats
    table = Table(title="chaos_outages")
    table.add_column("figure")
    table.add_column("value", justify="right")
    rows = [
        (
            "Redis SHUTDOWN NOSAVE + restart (s down in all)",
            f"{stats.redis_restarts} ({stats.redis_down_s:.0f})",
        ),
        (
            "PostgreSQL drops (worker sessions ended)",
            f"{stats.pg_drops} ({stats.pg_sessions_ended})",
        ),
        ("worker connections to Redis (incl. first)", str(reconnects)),
        ("workers and beats that exited", str(len(exits))),
        ("workers / beats / sweep batch", f"{args.workers} / {args.beats} / {args.sweep_batch}"),
        ("waves (clock jumps)", f"{driver.stats.waves} ({driver.stats.jumps})"),
        (
            "events (extra copies, reordered, sent again)",
            f"{driver.stats.events} ({driver.stats.copies}, {driver.stats.reordered}, "
            f"{driver.stats.resent})",
        ),
        *chaos_checks.findings_table(found),
        ("wall time", f"{elapsed:.0f} s"),
        ("load average at the end", load),
    ]
    for name, value in rows:
        table.add_row(name, value)
    console.print(table)
    for line in [*exits, *found.problems]:
        console.print(f"[red]{line[:300]}")
    if error is not None:
        console.print(f"[red]{error}")
    if run.keep_folder:
        console.print(f"process logs kept in {run.folder}")
    ok = found.ok and error is None and not exits and outages.remaining == 0
    console.print(
        f"SUMMARY chaos_outages: {'PASS' if ok else 'FAIL'}; "
        f"redis_restarts={stats.redis_restarts} pg_drops={stats.pg_drops} "
        f"(sessions {stats.pg_sessions_ended}) beats={args.beats} workers={args.workers} "
        f"exits={len(exits)} events={driver.stats.events} copies={driver.stats.copies} "
        f"reordered={driver.stats.reordered} resent={driver.stats.resent} "
        f"{found.summary()} in {elapsed:.0f} s, load {load}"
    )
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
