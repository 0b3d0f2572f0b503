"""Benchmark 1: the transition path against raw SQL.

Path A fires ``approve`` on submitted cases through ``CaseService.fire`` (the SQL unit of work of
``persistence/uow.py`` on the engine of ``persistence/db.py``, a ``FakeClock``): each call is one
transaction that compares-and-sets the case's version, appends the log row, disarms the
``merchant_review`` timer, arms ``return_shipment`` and writes the ``case.transitioned`` and
``pickup.requested`` outbox rows. Path B issues the same statements with the driver directly
(``bench/support.py``). Both run in one process on one throwaway database per backend, in
interleaved rounds (A,B then B,A), each round on fresh cases; the figure is the median over rounds
of A's rate divided by B's. Afterwards the rows both paths wrote are counted and compared.

    python -m bench.transition_path --backend both --transitions 5000 --rounds 5
"""

from __future__ import annotations

import argparse
import cProfile
import io
import pstats
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import sqlalchemy as sa
from rich.console import Console
from rich.progress import Progress, TaskID
from rich.table import Table
from sqlalchemy.engine import Engine

from bench import support
from config.policy import load_policy
from persistence.db import make_engine, normalize_url
from persistence.uow import SqlUnitOfWorkFactory
from workflow.clock import FakeClock
from workflow.service import CaseService

TARGET = 0.50
#: Progress is advanced every this many transitions.
STEP = 250


@dataclass
class Path_:
    """One way of approving a case, and what it measured."""

    key: str
    label: str
    approve: Callable[[int], None]
    rates: list[float] = field(default_factory=list)
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

    def ratio(self, key: str) -> float:
        return support.median(self.ratios[key])


def _timed(
    approve: Callable[[int], None], ids: Sequence[int], bar: Progress, task: TaskID
) -> float:
    """Approve every case of ``ids``; transitions per second."""
    start = time.perf_counter()
    for done, case_id in enumerate(ids, start=1):
        approve(case_id)
        if done % STEP == 0:
            bar.advance(task, STEP)
    elapsed = time.perf_counter() - start
    bar.advance(task, len(ids) % STEP)
    return len(ids) / elapsed


def _service(engine: Engine, clock: FakeClock) -> CaseService:
    return CaseService(SqlUnitOfWorkFactory(engine), clock, load_policy())


def run_backend(
    backend: str,
    server_url: str,
    transitions: int,
    rounds: int,
    warmup: int,
    variants: bool,
    profile_dir: Path | None,
    bar: Progress,
) -> BackendResult:
    with support.throwaway_database(backend, server_url) as database:
        engine = make_engine(database.url)
        clock = FakeClock(support.T0)
        service = _service(engine, clock)
        paths = {"A": Path_("A", "service layer", lambda _id: None)}
        no_ping: Engine | None = None
        if variants and backend == "postgres":
            # The production engine with pool_pre_ping off: what the checkout ping costs.
            no_ping = sa.create_engine(normalize_url(database.url))
            paths["A0"] = Path_("A0", "service layer, no pool pre-ping", lambda _id: None)
        paths["B"] = Path_("B", "raw driver", lambda _id: None)
        per_path = warmup + rounds * transitions
        profiled = transitions if profile_dir is not None else 0
        task = bar.add_task(f"{backend}: seeding", total=len(paths) * per_path + 2 * profiled)
        ids = support.seed_submitted_cases(
            service, engine, len(paths) * per_path + 2 * profiled, backend
        )
        clock.set(support.FIRED_AT)
        raw = support.raw_path(database)
        paths["B"].approve = raw.transition
        paths["A"].approve = lambda case_id: _fire(service, case_id)
        if no_ping is not None:
            other = _service(no_ping, clock)
            paths["A0"].approve = lambda case_id: _fire(other, case_id)
        try:
            # Warm-up (unmeasured): compiled statements, psycopg's prepared statements, caches.
            cursor = 0
            for path in paths.values():
                bar.update(task, description=f"{backend}: warm-up {path.key}")
                batch = ids[cursor : cursor + warmup]
                cursor += warmup
                path.ids.extend(batch)
                _timed(path.approve, batch, bar, task)
            chunks = iter(
                ids[i : i + transitions]
                for i in range(cursor, cursor + rounds * len(paths) * transitions, transitions)
            )
            order = list(paths.values())
            for number in range(rounds):
                # A,B then B,A: neither path always runs right after the other.
                for path in order if number % 2 == 0 else reversed(order):
                    bar.update(
                        task, description=f"{backend}: round {number + 1}/{rounds} {path.key}"
                    )
                    batch = next(chunks)
                    path.ids.extend(batch)
                    path.rates.append(_timed(path.approve, batch, bar, task))
            profile = ""
            if profile_dir is not None:
                start = cursor + rounds * len(paths) * transitions
                bar.update(task, description=f"{backend}: profiling A and B")
                profile = _profile(
                    backend,
                    {
                        "A": (paths["A"].approve, ids[start : start + transitions]),
                        "B": (raw.transition, ids[start + transitions : start + 2 * profiled]),
                    },
                    profile_dir,
                    bar,
                    task,
                )
        finally:
            raw.close()
            if no_ping is not None:
                no_ping.dispose()
        bar.update(task, description=f"{backend}: verifying")
        counts = {key: support.approval_counts(engine, path.ids) for key, path in paths.items()}
        samples = [support.written_rows(engine, path.ids[-1]) for path in paths.values()]
        identical = all(sample == samples[0] for sample in samples)
        bar.update(task, description=f"{backend}: done")
    ratios = {
        key: [a / b for a, b in zip(path.rates, paths["B"].rates, strict=True)]
        for key, path in paths.items()
        if key != "B"
    }
    return BackendResult(backend, paths, ratios, counts, identical, profile)


def _fire(service: CaseService, case_id: int) -> None:
    service.fire(case_id, "approve", support.MERCHANT)


def _profile(
    backend: str,
    work: dict[str, tuple[Callable[[int], None], list[int]]],
    directory: Path,
    bar: Progress,
    task: TaskID,
) -> str:
    """cProfile each path on its own fresh cases; the top of A's profile, as text."""
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
        report.write(f"\n== {backend} path {key}: {len(ids)} transitions, profile in {target}\n")
        stats.sort_stats("tottime").print_stats(25 if key == "A" else 12)
        if key == "A":
            stats.sort_stats("cumulative").print_stats(40)
    return report.getvalue()


def _table(results: list[BackendResult]) -> Table:
    table = Table(title="transition path: service layer (A) against raw SQL (B)")
    table.add_column("backend")
    table.add_column("path")
    table.add_column("transitions/s (median)", justify="right")
    table.add_column("rounds", justify="right")
    table.add_column("÷ raw SQL (median of rounds)", justify="right")
    table.add_column("range", justify="right")
    table.add_column(f"≥ {TARGET:.0%}", justify="center")
    for result in results:
        for key, path in result.paths.items():
            rates = ", ".join(f"{rate:,.0f}" for rate in path.rates)
            if key == "B":
                table.add_row(result.backend, f"B {path.label}", f"{result.rate(key):,.0f}", rates)
                continue
            ratios = result.ratios[key]
            met = result.ratio(key) >= TARGET
            table.add_row(
                result.backend,
                f"{key} {path.label}",
                f"{result.rate(key):,.0f}",
                rates,
                f"{result.ratio(key):.1%}",
                f"{min(ratios):.1%}–{max(ratios):.1%}",
                "[green]yes[/]" if met else "[red]no[/]",
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
        "--variants",
        action="store_true",
        help="also measure A0: the service on an engine without pool_pre_ping (PostgreSQL)",
    )
    parser.add_argument(
        "--profile",
        type=Path,
        metavar="DIR",
        help="afterwards, cProfile A and B on --transitions fresh cases each; .prof files in DIR",
    )
    args = parser.parse_args(argv)
    console = Console()
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
                    args.variants,
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
        paths = ", ".join(f"{key} {len(p.ids)}" for key, p in result.paths.items())
        console.print(
            f"{result.backend}: rows verified ({paths} cases: each approved once, one log row, "
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
