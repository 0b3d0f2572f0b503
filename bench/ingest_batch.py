"""Batch ingestion and batched timer firing, in process (no broker): what a commit costs.

Each event is ``merchant.approved`` for a fresh submitted case, a real transition. **S** ingests
one event per transaction, **B<k>** k per transaction (a savepoint each), **R1**/**R<k>** the same
statements with the raw driver (``bench.raw_ingest``). Timers: a sweep fires due
``merchant_review`` timers one per transaction (**T1**) or ``TIMER_BATCH`` per transaction
(**T<k>**). Variants alternate order each round; figures are medians over rounds; the rows are
verified afterwards.

    python -m bench.ingest_batch --backend both --events 1000 --rounds 3
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from rich.table import Table
from sqlalchemy.engine import Engine

from bench import support
from bench.raw_ingest import RawEvents, envelope
from config.policy import load_policy
from persistence.db import make_engine
from persistence.unit_of_work import SqlUnitOfWorkFactory
from workflow.clock import FakeClock
from workflow.events.ingestion import EventService, IngestStatus
from workflow.service import TIMER_BATCH, CaseService

#: ``merchant_review`` in config/policy.toml: when a submitted case's timer falls due.
MERCHANT_REVIEW = timedelta(hours=48)


@dataclass
class Variant:
    key: str
    label: str
    #: Applies (or fires) a list of case ids; returns how many applied.
    run: Callable[[list[int]], int]
    #: Events (or timers) per call of ``run``.
    chunk: int
    kind: str = "events"
    rates: list[float] = field(default_factory=list)
    ids: list[int] = field(default_factory=list)


def _service_variant(events: EventService, size: int) -> Callable[[list[int]], int]:
    if size == 1:

        def single(ids: list[int]) -> int:
            return sum(events.ingest(envelope(i)).status is IngestStatus.APPLIED for i in ids)

        return single

    def batch(ids: list[int]) -> int:
        results = events.ingest_many([envelope(i) for i in ids])
        return sum(result.status is IngestStatus.APPLIED for result in results)

    return batch


def _raw_variant(raw: RawEvents) -> Callable[[list[int]], int]:
    def run(ids: list[int]) -> int:
        raw.ingest(ids)
        return len(ids)

    return run


def _timer_variant(service: CaseService, claimer: str) -> Callable[[list[int]], int]:
    def run(ids: list[int]) -> int:
        # ``ids`` only says how many: the claim takes the oldest due timers.
        return sum(run.fired for run in service.sweep_timers(claimer, batch=len(ids)))

    return run


@dataclass
class BackendResult:
    backend: str
    variants: dict[str, Variant]
    ratios: dict[str, list[float]]
    counts: dict[str, int]
    load: str

    def rate(self, key: str) -> float:
        return support.median(self.variants[key].rates)

    def ratio(self, name: str) -> float:
        return support.median(self.ratios[name])


def _load() -> str:
    one, five, fifteen = os.getloadavg()
    return f"{one:.2f} {five:.2f} {fifteen:.2f}"


def run_backend(
    backend: str,
    server_url: str,
    per_variant: int,
    rounds: int,
    sizes: Sequence[int],
    timers: int,
    bar: Any,
) -> BackendResult:
    policy = load_policy()
    with support.throwaway_database(backend, server_url) as database:
        engine = make_engine(database.url)
        clock = FakeClock(support.T0)
        factory = SqlUnitOfWorkFactory(engine)
        service = CaseService(factory, clock, policy)
        variants: dict[str, Variant] = {}
        raw = RawEvents(database)
        for size in sizes:
            events = EventService(service, factory, clock, max_batch=size)
            key = "S" if size == 1 else f"B{size}"
            label = "S ingest, one tx each" if size == 1 else f"B{size} ingest_many, {size}/tx"
            variants[key] = Variant(key, label, _service_variant(events, size), size)
            variants[f"R{size}"] = Variant(
                f"R{size}", f"R{size} raw driver, {size}/tx", _raw_variant(raw), size
            )
        one_by_one = CaseService(factory, clock, policy, timer_batch=1)
        variants["T1"] = Variant(
            "T1", "T1 sweep, one timer/tx", _timer_variant(one_by_one, "t1"), timers, "timers"
        )
        variants[f"T{TIMER_BATCH}"] = Variant(
            f"T{TIMER_BATCH}",
            f"T{TIMER_BATCH} sweep, {TIMER_BATCH} timers/tx",
            _timer_variant(service, "tk"),
            timers,
            "timers",
        )
        event_variants = [v for v in variants.values() if v.kind == "events"]
        warmup = max(sizes)
        needed = len(event_variants) * (per_variant * rounds + warmup)
        task = bar.add_task(f"{backend}: seeding", total=None)
        support.seed_submitted_cases(service, engine, 2 * timers * (rounds + 1), f"{backend}-t")
        ids = iter(support.seed_submitted_cases(service, engine, needed, backend))
        # Past every merchant_review deadline (48 h): each seeded case's timer is due.
        clock.set(support.T0 + MERCHANT_REVIEW + timedelta(minutes=1))
        total = sum(
            (per_variant if v.kind == "events" else timers) * rounds + warmup
            for v in variants.values()
        )
        bar.update(task, total=total, completed=0)

        def measure(variant: Variant, count: int, record: bool) -> None:
            # Timer variants take no ids: their sweep claims the oldest due timers, which are
            # the timer pool's (seeded first, so lower ids at the same due time).
            batch = [next(ids) for _ in range(count)] if variant.kind == "events" else [0] * count
            variant.ids.extend(batch)
            start = time.perf_counter()
            applied = 0
            for at in range(0, count, variant.chunk):
                applied += variant.run(batch[at : at + variant.chunk])
                bar.update(task, advance=min(variant.chunk, count - at))
            elapsed = time.perf_counter() - start
            if applied != count:
                raise RuntimeError(f"{variant.key}: {applied} of {count} applied")
            if record:
                variant.rates.append(count / elapsed)

        for variant in variants.values():
            bar.update(task, description=f"{backend}: warm-up {variant.key}")
            measure(variant, warmup if variant.kind == "events" else timers, record=False)
        order = list(variants.values())
        ratios: dict[str, list[float]] = {}
        for number in range(rounds):
            for variant in order if number % 2 == 0 else reversed(order):
                bar.update(
                    task, description=f"{backend}: round {number + 1}/{rounds} {variant.key}"
                )
                measure(variant, per_variant if variant.kind == "events" else timers, record=True)
            for size in sizes:
                service_key = "S" if size == 1 else f"B{size}"
                ratios.setdefault(f"{service_key}/R{size}", []).append(
                    variants[service_key].rates[-1] / variants[f"R{size}"].rates[-1]
                )
                ratios.setdefault(f"{service_key}/S", []).append(
                    variants[service_key].rates[-1] / variants["S"].rates[-1]
                )
            ratios.setdefault(f"T{TIMER_BATCH}/T1", []).append(
                variants[f"T{TIMER_BATCH}"].rates[-1] / variants["T1"].rates[-1]
            )
        raw.close()
        counts = _counts(engine, [i for v in event_variants for i in v.ids])
        return BackendResult(backend, variants, ratios, counts, _load())


#: Counts of ``_counts`` that must be 0; the others must equal the number of events.
_NONE_WANTED = frozenset(
    {
        "event idempotency keys registered",
        "timer firings logged more than once",
        "timers fired without their transition",
    }
)


def _counts(engine: Engine, event_ids: list[int]) -> dict[str, int]:
    """Rows that must each number len(event ids) or none (``_NONE_WANTED``)."""
    lo, hi = min(event_ids), max(event_ids)
    queries = {
        "approved by an event": (
            "SELECT count(*) FROM transitions WHERE case_id BETWEEN :lo AND :hi "
            "AND \"trigger\" = 'approve' AND idempotency_key LIKE 'event:%'"
        ),
        "dedupe records": ("SELECT count(*) FROM inbound_events WHERE case_id BETWEEN :lo AND :hi"),
        "event idempotency keys registered": (
            "SELECT count(*) FROM idempotency_keys WHERE case_id BETWEEN :lo AND :hi "
            "AND key LIKE 'event:%'"
        ),
        "return_shipment pending": (
            "SELECT count(*) FROM timers WHERE case_id BETWEEN :lo AND :hi "
            "AND kind = 'return_shipment' AND status = 'pending'"
        ),
        "outbox rows / 2": ("SELECT count(*) / 2 FROM outbox WHERE case_id BETWEEN :lo AND :hi"),
        "timer firings logged more than once": (
            'SELECT count(*) FROM (SELECT case_id FROM transitions WHERE "trigger" = '
            "'auto_approve' GROUP BY case_id HAVING count(*) > 1) AS twice"
        ),
        "timers fired without their transition": (
            "SELECT count(*) FROM timers t WHERE t.kind = 'merchant_review' AND t.status = "
            "'fired' AND NOT EXISTS (SELECT 1 FROM transitions l WHERE l.case_id = t.case_id "
            "AND l.\"trigger\" = 'auto_approve')"
        ),
    }
    with engine.connect() as connection:
        return {
            name: int(connection.execute(sa.text(sql), {"lo": lo, "hi": hi}).scalar_one())
            for name, sql in queries.items()
        }


def _rows(results: list[BackendResult]) -> list[tuple[str, str, str, str, str]]:
    """(backend, variant, rate, ratio to raw at the same batch size, ratio to one per tx)."""
    rows = []
    for result in results:
        for key, variant in result.variants.items():
            versus_raw = versus_single = ""
            if key == "S" or key.startswith("B"):
                versus_raw = f"{result.ratio(f'{key}/R{variant.chunk}'):.0%}"
                versus_single = f"{result.ratio(f'{key}/S'):.2f}×"
            if key == f"T{TIMER_BATCH}":
                versus_single = f"{result.ratio(key + '/T1'):.2f}× T1"
            rows.append(
                (
                    result.backend,
                    variant.label,
                    f"{result.rate(key):,.0f}",
                    versus_raw,
                    versus_single,
                )
            )
    return rows


def _table(results: list[BackendResult]) -> Table:
    table = Table(title="events/s and timers/s (median over rounds) and ratios")
    table.add_column("backend")
    table.add_column("variant")
    table.add_column("rate/s", justify="right")
    table.add_column("vs raw, same batch", justify="right")
    table.add_column("vs one per tx", justify="right")
    for row in _rows(results):
        table.add_row(*row)
    return table


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--backend", choices=["sqlite", "postgres", "both"], default="both")
    parser.add_argument("--events", type=int, default=1000, help="per variant per round")
    parser.add_argument("--timers", type=int, default=1000, help="per timer variant per round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--sizes", default="1,10,100,500", help="batch sizes (1 = single ingestion)"
    )
    parser.add_argument("--postgres-url", help="server for the throwaway database")
    parser.add_argument(
        "--markdown", type=Path, help="write the results section (markdown) to this file"
    )
    args = parser.parse_args(argv)
    sizes = sorted({int(s) for s in args.sizes.split(",")} | {1})
    if args.events % max(sizes):
        parser.error(f"--events must be a multiple of the largest batch size {max(sizes)}")
    console = support.console()
    server_url = support.postgres_url(args.postgres_url)
    chosen = support.backends(args.backend)
    facts = support.machine(server_url if "postgres" in chosen else None)
    support.print_machine(console, facts)
    load_before = _load()
    results = []
    with support.progress(console) as bar:
        for backend in chosen:
            results.append(
                run_backend(backend, server_url, args.events, args.rounds, sizes, args.timers, bar)
            )
    console.print(_table(results))
    ok = True
    for result in results:
        events_total = sum(len(v.ids) for v in result.variants.values() if v.kind == "events")
        for name, count in result.counts.items():
            want = 0 if name in _NONE_WANTED else events_total
            if count != want:
                ok = False
                console.print(f"[red]{result.backend}: {name} = {count}, expected {want}")
        console.print(f"{result.backend}: load average after: {result.load}")
    verdicts = []
    for r in results:
        best = max((k for k in r.variants if k.startswith("B")), key=r.rate, default="S")
        verdicts.append(
            f"{r.backend} S {r.rate('S'):,.0f}/s ({r.ratio('S/R1'):.0%} of raw), "
            f"{best} {r.rate(best):,.0f}/s ({r.ratio(best + '/S'):.1f}× S, "
            f"{r.ratio(f'{best}/R{r.variants[best].chunk}'):.0%} of raw), "
            f"timers T{TIMER_BATCH} {r.rate(f'T{TIMER_BATCH}'):,.0f}/s "
            f"({r.ratio(f'T{TIMER_BATCH}/T1'):.1f}× T1)"
        )
    command = "python -m bench.ingest_batch " + " ".join(sys.argv[1:] if argv is None else argv)
    if args.markdown:
        args.markdown.write_text(_markdown(results, facts, command, load_before))
    print(
        f"SUMMARY ingest_batch: {'; '.join(verdicts)}; rows {'verified' if ok else 'WRONG'}; "
        f"load {load_before} -> {_load()}"
    )
    return 0 if ok else 1


def _markdown(results: list[BackendResult], facts: dict[str, str], command: str, load: str) -> str:
    lines = [
        f"Run {facts['date']}, load average before {load}: `{command.strip()}`",
        "",
        "| backend | variant | rate/s | vs raw, same batch | vs one per tx |",
        "|---|---|---:|---:|---:|",
        *("| " + " | ".join(row) + " |" for row in _rows(results)),
    ]
    lines.extend(f"| {r.backend} | load average after | {r.load} | | |" for r in results)
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    raise SystemExit(main())
