"""Benchmark 1: the transition path against raw SQL.

Path A fires ``approve`` through ``CaseService.fire`` (one transaction: compare-and-set, log row,
timers, two outbox rows); path B issues the same statements with the driver directly
(``bench.raw_baseline``). Interleaved rounds on fresh cases; the figure is the median of A's rate
over B's; the rows both wrote are compared afterwards. ``--breakdown`` adds U (the unit of work
alone), E (the in-memory work alone) and, on PostgreSQL, A0 (with ``pool_pre_ping``);
``--profile`` runs cProfile on A and B afterwards.

    python -m bench.transition_path --backend both --transitions 5000 --rounds 5
"""

from __future__ import annotations

import argparse
import cProfile
import io
import pstats
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import sqlalchemy as sa
from rich.progress import Progress, TaskID
from rich.table import Table
from sqlalchemy.engine import Engine

from bench import raw_baseline, support
from config.policy import Policy, load_policy
from persistence.db import make_engine, normalize_url
from persistence.unit_of_work import SqlUnitOfWorkFactory
from workflow import engine
from workflow.clock import FakeClock
from workflow.errors import Conflict
from workflow.model import Timer, TransitionRecord
from workflow.service import CaseService
from workflow.states import CaseState

TARGET = 0.50
#: Progress is advanced every this many transitions.
STEP = 250


@dataclass
class Path_:
    """One way of approving a case, and what it measured."""

    key: str
    label: str
    approve: Callable[[int], None]
    #: False for E, which touches no database.
    writes: bool = True
    rates: list[float] = field(default_factory=list)
    #: This process's CPU time per transition (µs), by round: wall time less this is waiting.
    cpu: list[float] = field(default_factory=list)
    ids: list[int] = field(default_factory=list)


@dataclass
class BackendResult:
    backend: str
    paths: dict[str, Path_]
    ratios: dict[str, list[float]]
    counts: dict[str, dict[str, int]]
    identical: bool
    profile: str = ""

    def rate(self, key: str) -> float:
        return support.median(self.paths[key].rates)

    def cpu(self, key: str) -> float:
        return support.median(self.paths[key].cpu)

    def ratio(self, key: str) -> float:
        return support.median(self.ratios[key])


def _timed(
    approve: Callable[[int], None], ids: Sequence[int], bar: Progress, task: TaskID
) -> tuple[float, float]:
    """Approve every case of ``ids``: transitions per second, and CPU µs per transition."""
    start, cpu = time.perf_counter(), time.process_time()
    for done, case_id in enumerate(ids, start=1):
        approve(case_id)
        if done % STEP == 0:
            bar.advance(task, STEP)
    elapsed, cpu = time.perf_counter() - start, time.process_time() - cpu
    bar.advance(task, len(ids) % STEP)
    return len(ids) / elapsed, cpu / len(ids) * 1e6


def _service(engine: Engine, clock: FakeClock, policy: Policy) -> CaseService:
    return CaseService(SqlUnitOfWorkFactory(engine), clock, policy)


def _fire(service: CaseService) -> Callable[[int], None]:
    fire = service.fire

    def approve(case_id: int) -> None:
        fire(case_id, "approve", support.MERCHANT)

    return approve


def _unit_of_work_only(factory: SqlUnitOfWorkFactory, clock: FakeClock) -> Callable[[int], None]:
    """U: the statements of A through the SQL unit of work, the domain objects built by hand:
    what A costs without the service layer and the state machine."""

    def approve(case_id: int) -> None:
        now = clock.now()
        with factory() as uow:
            case = uow.cases.get(case_id)
            assert case is not None
            uow.timers.pending(case_id)
            loaded, source = case.version, case.state
            case.state, case.version, case.updated_at = CaseState.APPROVED, loaded + 1, now
            record = TransitionRecord(
                case_id, case.version, "approve", source, case.state, str(support.MERCHANT), now
            )
            try:
                uow.cases.save(case, loaded)
            except Conflict as moved:
                raise raw_baseline.Refused(f"case {case_id} moved") from moved
            uow.log.append([record])
            uow.timers.disarm(case_id)
            due = now + support.RETURN_SHIPMENT
            uow.timers.arm(
                Timer(
                    case_id, "return_shipment", "expire_return", case.state, case.version, due, now
                )
            )
            uow.outbox.add(engine.messages_for(case, record))
            uow.commit()

    return approve


def _engine_only(
    factory: SqlUnitOfWorkFactory, case_id: int, clock: FakeClock, policy: Policy
) -> Callable[[int], None]:
    """E: what A does in memory around the unit of work (state machine, log record, outbox
    messages, next timer) on a copy of a loaded case; no database."""
    with factory() as uow:
        loaded = uow.cases.get(case_id)
        previous = uow.timers.pending(case_id)
    assert loaded is not None

    def approve(_ignored: int) -> None:
        case = replace(loaded, details=dict(loaded.details))
        context = engine.Context(policy, clock.now(), support.MERCHANT, previous)
        outcome = engine.fire(case, "approve", context)
        engine.timer_for(case, policy, outcome.records[-1].at, previous)

    return approve


def run_backend(
    backend: str,
    server_url: str,
    transitions: int,
    rounds: int,
    warmup: int,
    breakdown: bool,
    profile_dir: Path | None,
    bar: Progress,
) -> BackendResult:
    policy = load_policy()
    with support.throwaway_database(backend, server_url) as database:
        production = make_engine(database.url)
        clock = FakeClock(support.T0)
        service = _service(production, clock, policy)
        # The engine as it was before: a ping per checkout (what the retry replaced).
        pinging = (
            sa.create_engine(normalize_url(database.url), pool_pre_ping=True)
            if breakdown and backend == "postgres"
            else None
        )
        writers = 2 + (1 if breakdown else 0) + (1 if pinging is not None else 0)
        per_path = warmup + rounds * transitions
        profiled = 2 * transitions if profile_dir is not None else 0
        task = bar.add_task(f"{backend}: seeding", total=None)
        ids = support.seed_submitted_cases(
            service, production, writers * per_path + profiled + 1, backend
        )
        spare, ids = ids[-1], ids[:-1]
        clock.set(support.FIRED_AT)
        raw = raw_baseline.raw_path(database)
        paths = {"A": Path_("A", "A service layer", _fire(service))}
        if pinging is not None:
            paths["A0"] = Path_(
                "A0", "A0 same, with pool_pre_ping", _fire(_service(pinging, clock, policy))
            )
        if breakdown:
            factory = SqlUnitOfWorkFactory(production)
            paths["U"] = Path_("U", "U unit of work only", _unit_of_work_only(factory, clock))
            paths["E"] = Path_(
                "E",
                "E engine only (no database)",
                _engine_only(factory, spare, clock, policy),
                writes=False,
            )
        paths["B"] = Path_("B", "B raw SQL (driver)", raw.transition)
        bar.update(task, total=len(paths) * per_path + profiled)
        fresh = iter(ids)

        def take(path: Path_, count: int) -> list[int]:
            if not path.writes:
                return list(range(count))
            batch = [next(fresh) for _ in range(count)]
            path.ids.extend(batch)
            return batch

        try:
            # Warm-up (unmeasured): compiled statements, psycopg's prepared statements, caches.
            for path in paths.values():
                bar.update(task, description=f"{backend}: warm-up {path.key}")
                _timed(path.approve, take(path, warmup), bar, task)
            order = list(paths.values())
            for number in range(rounds):
                # A,B then B,A: neither path always runs right after the other.
                for path in order if number % 2 == 0 else reversed(order):
                    bar.update(
                        task, description=f"{backend}: round {number + 1}/{rounds} {path.key}"
                    )
                    rate, cpu = _timed(path.approve, take(path, transitions), bar, task)
                    path.rates.append(rate)
                    path.cpu.append(cpu)
            profile = ""
            if profile_dir is not None:
                bar.update(task, description=f"{backend}: profiling A and B")
                work = {
                    key: (paths[key].approve, [next(fresh) for _ in range(transitions)])
                    for key in ("A", "B")
                }
                profile = _profile(backend, work, profile_dir, bar, task)
        finally:
            raw.close()
            if pinging is not None:
                pinging.dispose()
        bar.update(task, description=f"{backend}: verifying")
        written = [path for path in paths.values() if path.writes]
        counts = {path.key: support.approval_counts(production, path.ids) for path in written}
        samples = [support.written_rows(production, path.ids[-1]) for path in written]
        identical = all(sample == samples[0] for sample in samples)
        bar.update(task, description=f"{backend}: done")
    ratios = {
        key: [a / b for a, b in zip(path.rates, paths["B"].rates, strict=True)]
        for key, path in paths.items()
        if key != "B"
    }
    return BackendResult(backend, paths, ratios, counts, identical, profile)


def _profile(
    backend: str,
    work: dict[str, tuple[Callable[[int], None], list[int]]],
    directory: Path,
    bar: Progress,
    task: TaskID,
) -> str:
    """cProfile each path on its own fresh cases: time by area, and the top functions of A."""
    directory.mkdir(parents=True, exist_ok=True)
    report = io.StringIO()
    for key, (approve, ids) in work.items():
        profiler = cProfile.Profile()
        profiler.enable()
        _timed(approve, ids, bar, task)
        profiler.disable()
        target = directory / f"transition_path-{backend}-{key}.prof"
        profiler.dump_stats(target)
        stats = pstats.Stats(profiler, stream=report)
        report.write(f"\n== {backend} path {key}: {len(ids)} transitions; {target}\n")
        report.write(support.areas_report(stats, len(ids), "transition"))
        if key == "A":
            stats.sort_stats("tottime").print_stats(30)
    return report.getvalue()


def _table(results: list[BackendResult]) -> Table:
    table = Table(title="transition path: service layer (A) against raw SQL (B)")
    table.add_column("backend")
    table.add_column("path")
    table.add_column("tx/s", justify="right")
    table.add_column("µs/tx", justify="right")
    table.add_column("CPU µs/tx", justify="right")
    table.add_column("÷ B", justify="right")
    table.add_column("range", justify="right")
    table.add_column("tx/s by round")
    for result in results:
        for key, path in result.paths.items():
            rates = " ".join(f"{rate:.0f}" for rate in path.rates)
            rate = result.rate(key)
            cpu = f"{result.cpu(key):.0f}"
            cells = [result.backend, path.label, f"{rate:.0f}", f"{1e6 / rate:.0f}", cpu]
            if key == "B":
                table.add_row(*cells, "", "", rates)
                continue
            ratios = result.ratios[key]
            mark = "" if key != "A" else (" ✓" if result.ratio(key) >= TARGET else " ✗")
            table.add_row(
                *cells,
                f"{result.ratio(key):.1%}{mark}",
                f"{min(ratios):.0%}–{max(ratios):.0%}",
                rates,
            )
        table.add_section()
    return table


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--backend", choices=["sqlite", "postgres", "both"], default="both")
    parser.add_argument("--transitions", type=int, default=5000, help="per path per round")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=300, help="unmeasured, per path")
    parser.add_argument(
        "--postgres-url",
        help=f"server to create the throwaway database on (default ${support.POSTGRES_ENV} "
        f"or {support.DEFAULT_POSTGRES_URL})",
    )
    parser.add_argument(
        "--breakdown",
        action="store_true",
        help="also measure U (the unit of work without service and state machine), E (the "
        "state machine etc. without database) and, on PostgreSQL, A0 (A with pool_pre_ping)",
    )
    parser.add_argument(
        "--profile",
        type=Path,
        metavar="DIR",
        help="afterwards, cProfile A and B on --transitions fresh cases each; .prof files in DIR",
    )
    args = parser.parse_args(argv)
    console = support.console()
    server_url = support.postgres_url(args.postgres_url)
    chosen = support.backends(args.backend)
    support.print_machine(console, support.machine(server_url if "postgres" in chosen else None))
    console.print(
        f"{args.transitions} transitions per path per round, {args.rounds} rounds "
        f"(+{args.warmup} warm-up per path)"
    )
    results = []
    with support.progress(console) as bar:
        for backend in chosen:
            results.append(
                run_backend(
                    backend,
                    server_url,
                    args.transitions,
                    args.rounds,
                    args.warmup,
                    args.breakdown,
                    args.profile,
                    bar,
                )
            )
    console.print(_table(results))
    ok = True
    for result in results:
        for key, counts in result.counts.items():
            expected = len(result.paths[key].ids)
            wrong = {name: n for name, n in counts.items() if n != expected}
            if wrong:
                ok = False
                console.print(f"[red]{result.backend} {key}: expected {expected} of each, {wrong}")
        if not result.identical:
            ok = False
            console.print(f"[red]{result.backend}: the paths wrote different rows")
        paths = ", ".join(f"{key} {len(p.ids)}" for key, p in result.paths.items() if p.writes)
        console.print(
            f"{result.backend}: rows checked ({paths} cases: each approved once, one log row, "
            f"merchant_review cancelled, return_shipment pending, 2 outbox rows; a case of each "
            f"path compared column by column: {'identical' if result.identical else 'DIFFERENT'})"
        )
        if result.profile:
            console.print(result.profile, markup=False, highlight=False)
    verdicts = "; ".join(
        f"{r.backend} A/B {r.ratio('A'):.1%} "
        f"(A {r.rate('A'):,.0f}/s, B {r.rate('B'):,.0f}/s) "
        f"{'met' if r.ratio('A') >= TARGET else 'NOT met'}"
        for r in results
    )
    met = all(r.ratio("A") >= TARGET for r in results)
    print(
        f"SUMMARY transition_path: target A ≥ {TARGET:.0%} of raw SQL "
        f"{'met' if met else 'NOT met'}: {verdicts}; rows {'verified' if ok else 'WRONG'}"
    )
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
