"""Micro-measurements behind the findings in BENCHMARKS.md: single costs of the hot path, each
beside the same work done the cheap way, interleaved in rounds (median of rounds).

    python -m bench.probes --backend both
"""

from __future__ import annotations

import argparse
import sqlite3
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import sqlalchemy as sa
from rich.table import Table

from bench import support
from config.policy import load_policy
from persistence.db import make_engine, normalize_url
from persistence.uow import SqlUnitOfWork, SqlUnitOfWorkFactory
from workflow.clock import FakeClock
from workflow.service import CaseService


@dataclass
class Probe:
    name: str
    ours: Callable[[], object]
    cheap: Callable[[], object]
    #: What ``ours`` does that ``cheap`` does not.
    note: str


def _per_call(run: Callable[[], object], calls: int) -> float:
    start = time.perf_counter()
    for _ in range(calls):
        run()
    return (time.perf_counter() - start) / calls * 1e6


def _measure(probe: Probe, calls: int, rounds: int) -> tuple[float, float]:
    for _ in range(max(calls // 10, 50)):
        probe.ours()
        probe.cheap()
    ours: list[float] = []
    cheap: list[float] = []
    for number in range(rounds):
        pair = [(ours, probe.ours), (cheap, probe.cheap)]
        for results, run in pair if number % 2 == 0 else reversed(pair):
            results.append(_per_call(run, calls))
    return support.median(ours), support.median(cheap)


def _read_probes(database: support.Database, uow: SqlUnitOfWork, case_id: int) -> list[Probe]:
    """Probes run inside one open unit of work (its transaction holds no competing lock)."""
    dbapi = uow.connection.connection.dbapi_connection
    assert dbapi is not None
    postgres = database.backend == "postgres"
    select_case = uow.statements.select_case
    params: dict[str, int] | tuple[int] = {"case_id": case_id} if postgres else (case_id,)
    reused = dbapi.cursor()

    def prepared_first() -> object:
        return select_case.first(uow.connection, {"case_id": case_id})

    def raw_first() -> object:
        reused.execute(select_case.sql, params)
        return reused.fetchall()

    def fresh_cursor() -> object:
        cursor = dbapi.cursor()
        cursor.execute(select_case.sql, params)
        rows = cursor.fetchall()
        cursor.close()
        return rows

    def open_cases() -> object:
        return uow.cases.open_cases_for_items("o-probe", ["sku-1"])

    in_sql = (
        "SELECT open_case_items.sku, open_case_items.case_id FROM open_case_items "
        "WHERE open_case_items.order_id = {p} AND open_case_items.sku IN ({p})"
    ).format(p="%s" if postgres else "?")

    def open_cases_raw() -> object:
        reused.execute(in_sql, ("o-probe", "sku-1"))
        return reused.fetchall()

    return [
        Probe(
            "read the case row: Prepared.first vs the driver",
            prepared_first,
            raw_first,
            "result processors (dates, JSON), a fresh cursor, fastsql bookkeeping",
        ),
        Probe(
            "one SELECT on a fresh DBAPI cursor vs a reused one",
            fresh_cursor,
            raw_first,
            "fastsql.Prepared._run opens a cursor per statement",
        ),
        Probe(
            "open_cases_for_items (Core select built per call) vs the same SQL on the driver",
            open_cases,
            open_cases_raw,
            "statement construction, cache key, Connection.execute, expanding IN",
        ),
    ]


def _transaction_probe(database: support.Database) -> Probe:
    """What opening and ending a unit of work costs beyond the driver's own transaction."""
    engine = make_engine(database.url)
    if database.backend == "postgres":
        no_ping = sa.create_engine(normalize_url(database.url))

        def checkout(with_engine: sa.Engine) -> Callable[[], object]:
            def run() -> object:
                with with_engine.connect() as connection:
                    return connection.connection.dbapi_connection

            return run

        return Probe(
            "pool checkout + checkin: make_engine (pre-ping) vs no pre-ping",
            checkout(engine),
            checkout(no_ping),
            "pool_pre_ping: one round trip (';' in autocommit) per checkout",
        )
    assert database.path is not None
    raw = sqlite3.connect(database.path, isolation_level=None)

    def unit_of_work() -> object:
        with engine.connect() as connection:
            connection.begin()
            connection.commit()
        return None

    def raw_transaction() -> object:
        raw.execute("BEGIN IMMEDIATE")
        raw.execute("COMMIT")
        return None

    return Probe(
        "empty transaction: engine.connect(), BEGIN IMMEDIATE, COMMIT, close vs the driver",
        unit_of_work,
        raw_transaction,
        "pool checkout/checkin, Connection and transaction objects",
    )


def run_backend(backend: str, server_url: str, calls: int, rounds: int) -> list[list[str]]:
    rows = []

    def measure(probe: Probe) -> None:
        ours, cheap = _measure(probe, calls, rounds)
        rows.append(
            [backend, probe.name, f"{ours:.1f}", f"{cheap:.1f}", f"{ours - cheap:.1f}", probe.note]
        )

    with support.throwaway_database(backend, server_url) as database:
        engine = make_engine(database.url)
        service = CaseService(SqlUnitOfWorkFactory(engine), FakeClock(support.T0), load_policy())
        case_id = service.submit(support.application("o-probe")).case.id
        assert case_id is not None
        with SqlUnitOfWorkFactory(engine)() as uow:
            uow.cases.get(case_id)  # begins the transaction the probes read in
            for probe in _read_probes(database, uow, case_id):
                measure(probe)
        measure(_transaction_probe(database))
    return rows


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--backend", choices=["sqlite", "postgres", "both"], default="both")
    parser.add_argument("--calls", type=int, default=2000, help="per variant per round")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--postgres-url")
    args = parser.parse_args(argv)
    console = support.console()
    server_url = support.postgres_url(args.postgres_url)
    chosen = support.backends(args.backend)
    support.print_machine(console, support.machine(server_url if "postgres" in chosen else None))
    table = Table(title="probes: µs per call, median of interleaved rounds")
    for column in ("backend", "what", "ours µs", "cheap µs", "difference µs", "ours does"):
        table.add_column(column, justify="right" if "µs" in column else "left")
    results = []
    for backend in chosen:
        results.extend(run_backend(backend, server_url, args.calls, args.rounds))
    for row in results:
        table.add_row(*row)
    console.print(table)
    print(
        "SUMMARY probes: "
        + "; ".join(f"{row[0]} {row[1].split(':')[0]} +{row[4]} us" for row in results)
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
