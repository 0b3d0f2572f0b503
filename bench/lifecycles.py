"""Benchmark 4: full lifecycles.

``--cases`` cases of mixed types (return_refund, exchange, repair, refund_only; see ``SCENARIOS``)
are driven to completion in one process: buyers and merchants act through ``CaseService``,
carriers and the payment channel send events through ``EventService``, and a ``FakeClock`` moves
forward as a discrete-event simulation, with a timer sweep (``run_due_timers``) every simulated
hour; some cases finish by their timers. Cases arrive two simulated minutes apart and overlap,
so thousands are open at once.

The run is split into rounds. Each round drives its share of the cases (A) and then has the raw
driver write as many transition transactions as A logged transitions (B: the baseline transaction
of benchmark 1, the statements of a transition with the driver directly, on a pool of seeded
cases). The figure is the median over rounds of A's transitions per second divided by B's.

    python -m bench.lifecycles --backend both --cases 10000 --rounds 5
"""

from __future__ import annotations

import argparse
import cProfile
import io
import pstats
import random
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import sqlalchemy as sa
from rich.progress import Progress
from rich.table import Table
from sqlalchemy.engine import Engine

from bench import raw_baseline, support
from bench.lifecycle_scenarios import FAR, SCENARIOS, START, sources
from bench.lifecycle_simulation import CountingFactory, Lifecycle, Simulation
from config.policy import Policy, load_policy
from persistence.db import make_engine
from persistence.tables import timers
from persistence.unit_of_work import SqlUnitOfWorkFactory
from workflow.clock import FakeClock
from workflow.events.ingestion import EventService
from workflow.service import CaseService

#: The raw baseline cycles over this many seeded cases.
POOL = 1000


@dataclass
class RoundResult:
    cases: int
    seconds: float
    transitions: int
    units_of_work: int
    raw_transitions: int
    raw_seconds: float

    @property
    def lifecycles_per_s(self) -> float:
        return self.cases / self.seconds

    @property
    def transitions_per_s(self) -> float:
        return self.transitions / self.seconds

    @property
    def raw_per_s(self) -> float:
        return self.raw_transitions / self.raw_seconds

    @property
    def ratio(self) -> float:
        return self.transitions_per_s / self.raw_per_s


@dataclass
class BackendResult:
    backend: str
    rounds: list[RoundResult]
    final_states: dict[str, Counter[str]]
    expected: dict[str, str]
    failures: list[str]
    timers_fired: int
    timers_idle: int
    events_applied: int
    left_pending: int
    profile: str = ""

    def median(self, value: Callable[[RoundResult], float]) -> float:
        return support.median([value(r) for r in self.rounds])

    @property
    def wrong(self) -> dict[str, Counter[str]]:
        return {
            name: states
            for name, states in self.final_states.items()
            if set(states) != {self.expected[name]}
        }


def _count(engine: Engine, sql: str) -> int:
    with engine.connect() as connection:
        return int(connection.execute(sa.text(sql)).scalar_one())


def run_backend(
    backend: str,
    server_url: str,
    cases: int,
    rounds: int,
    seed: int,
    baseline_share: float,
    policy: Policy,
    profile_dir: Path | None,
    bar: Progress,
) -> BackendResult:
    rng = random.Random(seed)
    mix = rng.choices(SCENARIOS, weights=[s.weight for s in SCENARIOS], k=cases)
    lifecycles = [Lifecycle(number, scenario) for number, scenario in enumerate(mix, start=1)]
    with support.throwaway_database(backend, server_url) as database:
        production = make_engine(database.url)
        clock = FakeClock(support.T0)
        factory = CountingFactory(SqlUnitOfWorkFactory(production))
        service = CaseService(factory, clock, policy)
        events = EventService(service, factory, clock, sources=sources())
        task = bar.add_task(f"{backend}: seeding the baseline's cases", total=cases)
        pool = support.seed_submitted_cases(service, production, POOL, f"{backend}-pool")
        # The pool's timers (and those the baseline arms) must never come due in a sweep.
        with production.begin() as connection:
            connection.execute(sa.update(timers).values(due_at=FAR))
        raw = raw_baseline.raw_path(database, now=FAR)
        clock.set(START)
        simulation = Simulation(service, events, clock, bar, task)
        raw_task = bar.add_task(f"{backend}: raw baseline", total=None)
        results = []
        visits = 0
        profile = ""
        measured = simulation
        try:
            # Unmeasured warm-up: a few lifecycles of every scenario, and the raw path.
            bar.update(task, description=f"{backend}: warm-up")
            warm = [Lifecycle(cases + 1 + i, s) for i, s in enumerate(SCENARIOS * 3)]
            simulation.run(warm)
            simulation.timers_fired = simulation.timers_idle = simulation.events_applied = 0
            for _ in range(200):
                raw.transition(pool[visits % POOL])
                visits += 1
            bar.update(task, completed=0)
            share = -(-cases // rounds)
            for number in range(rounds):
                batch = lifecycles[number * share : (number + 1) * share]
                if not batch:
                    break
                bar.update(task, description=f"{backend}: lifecycles, round {number + 1}/{rounds}")
                logged = _count(production, "SELECT count(*) FROM transitions")
                opened = factory.opened
                began = time.perf_counter()
                simulation.run(batch)
                seconds = time.perf_counter() - began
                transitions = _count(production, "SELECT count(*) FROM transitions") - logged
                units = factory.opened - opened
                bar.update(raw_task, description=f"{backend}: raw baseline, round {number + 1}")
                writes = max(1, round(transitions * baseline_share))
                began = time.perf_counter()
                for done in range(1, writes + 1):
                    raw.transition(pool[visits % POOL])
                    visits += 1
                    if done % 500 == 0:
                        bar.advance(raw_task, 500)
                raw_seconds = time.perf_counter() - began
                bar.advance(raw_task, writes % 500)
                results.append(
                    RoundResult(len(batch), seconds, transitions, units, writes, raw_seconds)
                )
            # What the measured rounds did (the profiled round below is not counted).
            measured = replace(simulation, failures=list(simulation.failures))
            if profile_dir is not None:
                bar.update(task, description=f"{backend}: profiling one more round of A")
                extra = [
                    Lifecycle(cases + 100 + len(warm) + i, lifecycle.scenario)
                    for i, lifecycle in enumerate(lifecycles[:share])
                ]
                profile = _profile(backend, simulation, extra, production, profile_dir)
        finally:
            raw.close()
        bar.update(task, description=f"{backend}: checking final states")
        final_states: dict[str, Counter[str]] = {s.name: Counter() for s in SCENARIOS}
        with production.connect() as connection:
            rows = connection.execute(sa.text("SELECT id, state FROM cases")).all()
        states = {int(row[0]): str(row[1]) for row in rows}
        for lifecycle in lifecycles:
            final_states[lifecycle.scenario.name][states.get(lifecycle.case_id, "missing")] += 1
        left_pending = _count(
            production,
            f"SELECT count(*) FROM timers WHERE status IN ('pending', 'claimed') "
            f"AND case_id NOT IN (SELECT id FROM cases WHERE order_id LIKE 'o-{backend}-pool%')",
        )
        bar.update(task, description=f"{backend}: done")
    return BackendResult(
        backend,
        results,
        final_states,
        {s.name: s.final.value for s in SCENARIOS},
        measured.failures,
        measured.timers_fired,
        measured.timers_idle,
        measured.events_applied,
        left_pending,
        profile,
    )


def _profile(
    backend: str,
    simulation: Simulation,
    lifecycles: list[Lifecycle],
    engine: Engine,
    directory: Path,
) -> str:
    """Drive ``lifecycles`` under cProfile (unmeasured): time by area, top functions."""
    directory.mkdir(parents=True, exist_ok=True)
    logged = _count(engine, "SELECT count(*) FROM transitions")
    profiler = cProfile.Profile()
    profiler.enable()
    simulation.run(lifecycles)
    profiler.disable()
    transitions = _count(engine, "SELECT count(*) FROM transitions") - logged
    target = directory / f"lifecycles-{backend}.prof"
    profiler.dump_stats(target)
    report = io.StringIO()
    stats = pstats.Stats(profiler, stream=report)
    report.write(
        f"\n== {backend}: {len(lifecycles)} lifecycles, {transitions} transitions; {target}\n"
    )
    report.write(support.areas_report(stats, transitions, "transition"))
    stats.sort_stats("tottime").print_stats(25)
    return report.getvalue()


def _table(results: list[BackendResult]) -> Table:
    table = Table(title="full lifecycles (A) against raw-driver transition transactions (B)")
    table.add_column("backend")
    table.add_column("lifecycles/s", justify="right")
    table.add_column("A transitions/s", justify="right")
    table.add_column("A units of work/s", justify="right")
    table.add_column("B raw transitions/s", justify="right")
    table.add_column("A ÷ B (median)", justify="right")
    table.add_column("range", justify="right")
    for r in results:
        ratios = [x.ratio for x in r.rounds]
        table.add_row(
            r.backend,
            f"{r.median(lambda x: x.lifecycles_per_s):.1f}",
            f"{r.median(lambda x: x.transitions_per_s):.0f}",
            f"{r.median(lambda x: x.units_of_work / x.seconds):.0f}",
            f"{r.median(lambda x: x.raw_per_s):.0f}",
            f"{r.median(lambda x: x.ratio):.1%}",
            f"{min(ratios):.0%}–{max(ratios):.0%}",
        )
    return table


def _rounds_table(result: BackendResult) -> Table:
    table = Table(title=f"{result.backend}: rounds", show_edge=False)
    for name in (
        "round",
        "cases",
        "A transitions",
        "A s",
        "A lifecycles/s",
        "A transitions/s",
        "B transactions",
        "B s",
        "B transitions/s",
        "A ÷ B",
    ):
        table.add_column(name, justify="right")
    for number, x in enumerate(result.rounds, start=1):
        table.add_row(
            str(number),
            str(x.cases),
            str(x.transitions),
            f"{x.seconds:.1f}",
            f"{x.lifecycles_per_s:.1f}",
            f"{x.transitions_per_s:.0f}",
            str(x.raw_transitions),
            f"{x.raw_seconds:.1f}",
            f"{x.raw_per_s:.0f}",
            f"{x.ratio:.1%}",
        )
    return table


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--backend", choices=["sqlite", "postgres", "both"], default="both")
    parser.add_argument("--cases", type=int, default=10_000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seed", type=int, default=7, help="of the scenario mix")
    parser.add_argument(
        "--baseline-share",
        type=float,
        default=1.0,
        help="raw transactions per round as a share of the transitions A logged in it "
        "(1: the same number; less keeps PostgreSQL runs short, the rate is what is compared)",
    )
    parser.add_argument(
        "--postgres-url",
        help=f"server to create the throwaway database on (default ${support.POSTGRES_ENV} "
        f"or {support.DEFAULT_POSTGRES_URL})",
    )
    parser.add_argument(
        "--profile",
        type=Path,
        metavar="DIR",
        help="afterwards, cProfile one more round of lifecycles (unmeasured); .prof files in DIR",
    )
    args = parser.parse_args(argv)
    console = support.console()
    server_url = support.postgres_url(args.postgres_url)
    chosen = support.backends(args.backend)
    support.print_machine(console, support.machine(server_url if "postgres" in chosen else None))
    mix = ", ".join(f"{s.name} {s.weight}%" for s in SCENARIOS)
    console.print(f"{args.cases} cases in {args.rounds} rounds; mix: {mix}")
    policy = load_policy()
    results = []
    with support.progress(console) as bar:
        for backend in chosen:
            results.append(
                run_backend(
                    backend,
                    server_url,
                    args.cases,
                    args.rounds,
                    args.seed,
                    args.baseline_share,
                    policy,
                    args.profile,
                    bar,
                )
            )
    console.print(_table(results))
    ok = True
    for r in results:
        console.print(_rounds_table(r))
        finals = Table(title=f"{r.backend}: final states", show_edge=False)
        finals.add_column("scenario")
        finals.add_column("cases", justify="right")
        finals.add_column("expected")
        finals.add_column("found")
        for name, states in r.final_states.items():
            found = ", ".join(f"{state} {n}" for state, n in states.most_common())
            finals.add_row(name, str(sum(states.values())), r.expected[name], found)
        console.print(finals)
        transitions = sum(x.transitions for x in r.rounds)
        units = sum(x.units_of_work for x in r.rounds)
        console.print(
            f"{r.backend}: {transitions} transitions logged in {units} units of work; "
            f"{r.events_applied} events applied; {r.timers_fired} timers fired, "
            f"{r.timers_idle} found stale; {r.left_pending} timers left pending; "
            f"{len(r.failures)} lifecycles failed"
        )
        for failure in r.failures[:5]:
            console.print(f"[red]  {failure}")
        if r.profile:
            console.print(r.profile, markup=False, highlight=False)
        if r.failures or r.wrong or r.left_pending:
            ok = False
    verdicts = "; ".join(
        f"{r.backend} {r.median(lambda x: x.lifecycles_per_s):.1f} lifecycles/s, "
        f"{r.median(lambda x: x.transitions_per_s):.0f} transitions/s = "
        f"{r.median(lambda x: x.ratio):.1%} of raw SQL ({r.median(lambda x: x.raw_per_s):.0f}/s)"
        for r in results
    )
    print(
        f"SUMMARY lifecycles: {args.cases} cases per backend: {verdicts}; "
        f"final states {'all as expected' if ok else 'WRONG'}"
    )
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
