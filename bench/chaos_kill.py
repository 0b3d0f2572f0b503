"""Fault injection, long run: ``kill -9`` of worker processes at random moments.

The mixed cases of ``bench.chaos_driver`` run on PostgreSQL and a private Redis while a killer
thread SIGKILLs, every ``--kill-every`` seconds, a random worker's whole process group or one of
its prefork children; a supervisor restarts killed workers at once, as systemd would. Events go
through the producer's ledger of unconfirmed events, so beat's resender makes up for a message
kombu lost with a killed main process (docs/workers.md); ``--no-ledger`` shows the loss. At the
end, ``bench.chaos_checks.verify``.

    python -m bench.chaos_kill                         # 300 cases, >= 50 kills, about 5 min
    python -m bench.chaos_kill --cases 60 --kills 10   # a quick look
"""

from __future__ import annotations

import argparse
import os
import random
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass

from rich.table import Table

from bench import chaos_checks, chaos_driver, support
from bench import chaos_common as chaos


@dataclass
class KillStats:
    main: int = 0
    children: int = 0

    @property
    def total(self) -> int:
        return self.main + self.children


class Killer:
    """SIGKILLs a random worker process: its main process with everything it started, or one
    of its prefork children. Holds the supervisor meanwhile, so no restart races the choice."""

    def __init__(
        self,
        run: chaos.Deployment,
        supervisor: chaos.Supervisor,
        rng: random.Random,
        on_kill: Callable[[int], None] = lambda total: None,
    ) -> None:
        self.run = run
        self.supervisor = supervisor
        self.rng = rng
        self.on_kill = on_kill
        self.stats = KillStats()

    def __call__(self) -> None:
        with self.supervisor.held():
            alive = [slot for slot in self.run.workers if slot.alive()]
            if not alive:
                return
            victim = self.rng.choice(alive)
            children = victim.children()
            if children and self.rng.random() < 0.5:
                try:
                    os.kill(self.rng.choice(children), signal.SIGKILL)
                except ProcessLookupError:
                    return  # it had just exited: no kill landed
                self.stats.children += 1
            else:
                victim.kill_group()
                self.stats.main += 1
        self.on_kill(self.stats.total)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--postgres-url", default=None)
    parser.add_argument("--cases", type=int, default=300)
    parser.add_argument("--waves", type=int, default=5)
    parser.add_argument("--workers", type=int, default=3)
    parser.add_argument("--concurrency", type=int, default=2)
    parser.add_argument("--kills", type=int, default=50, help="at least this many kills")
    parser.add_argument(
        "--kill-every", type=float, nargs=2, default=(1.5, 4.5), metavar=("MIN", "MAX")
    )
    parser.add_argument("--seed", type=int, default=5)
    parser.add_argument(
        "--resend-after",
        type=float,
        default=0.0,
        help="send again an event whose case has not moved this many seconds later (0: never)",
    )
    parser.add_argument(
        "--no-ledger",
        action="store_true",
        help="producers send without keeping their events (kombu's window then loses some)",
    )
    args = parser.parse_args(argv)

    console = support.console()
    server_url = support.postgres_url(args.postgres_url)
    support.print_machine(console, support.machine(server_url))
    rng = random.Random(args.seed)
    started = time.monotonic()
    load_before = chaos_checks.load_average()
    with chaos.deployment(server_url) as run, support.progress(console) as bars:
        run.keep_events = not args.no_ledger
        for _ in range(args.workers):
            run.add_worker(args.concurrency)
        run.add_beat()
        run.wait_ready()
        terminal = bars.add_task("cases terminal", total=args.cases)
        kills = bars.add_task("kill -9", total=args.kills)
        supervisor = chaos.Supervisor(run.workers + run.beats)
        killer = Killer(run, supervisor, rng, lambda n: bars.update(kills, completed=n))
        driver = chaos_driver.Driver(
            run,
            args.cases,
            args.waves,
            chaos_driver.Flood(resend_after_s=args.resend_after),
            rng,
            lambda done, total: bars.update(terminal, completed=done, total=total),
        )
        error: Exception | None = None
        with supervisor, chaos.AtRandomMoments(tuple(args.kill_every), rng, killer):
            try:
                driver.drive(keep_going=lambda: killer.stats.total < args.kills)
            except TimeoutError as stuck:
                error = stuck
        # The supervisor is stopped; bring back anyone the last kill took, so the last effects run.
        for slot in run.workers + run.beats:
            if not slot.alive():
                slot.start()
        chaos_checks.wait_settled(run)
        found = chaos_checks.verify(run)
        from_ledger = chaos_checks.resent_from_ledger(run)
        jobs, coalesced, fell_back = chaos_checks.coalesced_jobs(run)
        run.keep_folder = not found.ok or error is not None
        elapsed = time.monotonic() - started
        load_after = chaos_checks.load_average()

    table = Table(title="chaos_kill")
    table.add_column("figure")
    table.add_column("value", justify="right")
    rows = [
        (
            "kill -9 (main process / prefork child)",
            f"{killer.stats.total} ({killer.stats.main} / {killer.stats.children})",
        ),
        ("workers started again by the supervisor", str(supervisor.restarts)),
        ("waves (clock jumps)", f"{driver.stats.waves} ({driver.stats.jumps})"),
        ("events sent (sent again)", f"{driver.stats.events} ({driver.stats.resent})"),
        (
            "events sent again by the service from the producers' ledger",
            str(from_ledger) if run.keep_events else "off",
        ),
        (
            "coalesced jobs of single events (events; failed and run alone)",
            f"{jobs} ({coalesced}; {fell_back})",
        ),
        *chaos_checks.findings_table(found),
        ("wall time", f"{elapsed:.0f} s"),
        ("load average before / after", f"{load_before} / {load_after}"),
    ]
    for name, value in rows:
        table.add_row(name, value)
    console.print(table)
    for problem in found.problems:
        console.print(f"[red]{problem}")
    if error is not None:
        console.print(f"[red]{error}")
    if run.keep_folder:
        console.print(f"process logs kept in {run.folder}")
    ok = found.ok and error is None and killer.stats.total >= args.kills
    console.print(
        f"SUMMARY chaos_kill: {'PASS' if ok else 'FAIL'}; kills={killer.stats.total} "
        f"(main {killer.stats.main}, child {killer.stats.children}) restarts={supervisor.restarts} "
        f"events={driver.stats.events} resent={driver.stats.resent} "
        f"ledger={'on' if run.keep_events else 'off'} from_ledger={from_ledger} "
        f"coalesced_jobs={jobs} coalesced_events={coalesced} jobs_fell_back={fell_back} "
        f"{found.summary()} in {elapsed:.0f} s, load {load_after}"
    )
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
