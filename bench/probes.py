"""Micro-measurements behind the findings in BENCHMARKS.md: single costs of the hot path, each
beside the same work done the cheap way, interleaved in rounds (median of rounds).

    python -m bench.probes --backend both
"""

from __future__ import annotations

import argparse
import json
import sqlite3
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import psycopg
import sqlalchemy as sa
from rich.table import Table

from bench import support
from config.policy import load_policy
from persistence.db import make_engine, normalize_url
from persistence.unit_of_work import SqlUnitOfWork, SqlUnitOfWorkFactory
from workflow.clock import FakeClock
from workflow.service import CaseService


@dataclass
class Probe:
    name: str
    ours: Callable[[], object]
    cheap: Callable[[], object]
    #: What ``ours`` does that ``cheap`` does not.
    note: str
    #: Releases what the probe opened (connections, engines).
    close: Callable[[], object] = lambda: None


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
    postgres = database.backend == "postgres"
    dbapi = uow.connection.connection.dbapi_connection
    assert dbapi is not None
    # What ``uow.cases.get`` runs: the case with its live timer.
    select_case = uow.statements.select_case_and_timer
    params: dict[str, int] | tuple[int] = {"case_id": case_id} if postgres else (case_id,)
    reused = dbapi.cursor()
    details = 23  # the column's position in the case row

    def get_case() -> object:
        return uow.cases.get(case_id)

    def raw_case() -> object:
        # What the raw baseline does with the row: it decodes ``details`` (psycopg decodes
        # jsonb itself).
        reused.execute(select_case.sql, params)
        row = reused.fetchall()[0]
        return row[details] if postgres else json.loads(row[details])

    def raw_first() -> object:
        reused.execute(select_case.sql, params)
        return reused.fetchall()

    def fresh_cursor() -> object:
        cursor = dbapi.cursor()
        cursor.execute(select_case.sql, params)
        rows = cursor.fetchall()
        cursor.close()
        return rows

    def order() -> object:
        return uow.orders.get("o-probe")

    order_sql = "SELECT * FROM orders WHERE orders.order_id = {p}".format(
        p="%s" if postgres else "?"
    )

    def order_raw() -> object:
        reused.execute(order_sql, ("o-probe",))
        return reused.fetchall()

    return [
        Probe(
            "read a case: SqlCaseRepository.get vs the driver (row, details decoded)",
            get_case,
            raw_case,
            "dates, items and gifts converted, the Case built, its fixed fields kept",
        ),
        Probe(
            "one SELECT on a fresh DBAPI cursor vs a reused one",
            fresh_cursor,
            raw_first,
            "what a cursor per statement would cost (checkout.Checkout keeps one)",
        ),
        Probe(
            "read an order of record: SqlOrderStore.get vs the same SQL on the driver",
            order,
            order_raw,
            "the unit of work's statement plumbing, lines and gifts decoded, the Order built",
        ),
    ]


def _transaction_probe(database: support.Database) -> Probe:
    """What opening and ending a unit of work costs beyond the driver's own transaction."""
    engine = make_engine(database.url)
    factory = SqlUnitOfWorkFactory(engine)
    postgres = database.backend == "postgres"
    dbapi: Any = (
        psycopg.connect(database.conninfo)
        if postgres
        else sqlite3.connect(database.path or "", isolation_level=None)
    )
    with factory() as uow:
        disarm = uow.statements.disarm.sql
    no_timer: dict[str, Any] | tuple[str, int] = (
        {"status": "cancelled", "where_case_id": -1} if postgres else ("cancelled", -1)
    )

    def unit_of_work() -> object:
        with factory() as uow:
            uow.timers.disarm(-1)
            uow.commit()
        return None

    def raw_transaction() -> object:
        if postgres:
            with dbapi.cursor() as cursor:
                cursor.execute(disarm, no_timer)
            dbapi.commit()
        else:
            dbapi.execute("BEGIN IMMEDIATE")
            dbapi.execute(disarm, no_timer)
            dbapi.execute("COMMIT")
        return None

    return Probe(
        "smallest unit of work: open, BEGIN, one UPDATE (no row), COMMIT, close vs the driver",
        unit_of_work,
        raw_transaction,
        "pool checkout/checkin, the unit of work and its stores",
        dbapi.close,
    )


def _ping_probe(database: support.Database) -> Probe:
    """What ``pool_pre_ping`` (the engine's setting before) cost per checkout."""
    engine = make_engine(database.url)
    pinging = sa.create_engine(normalize_url(database.url), pool_pre_ping=True)

    def checkout(with_engine: sa.Engine) -> Callable[[], object]:
        def run() -> object:
            connection = with_engine.raw_connection()
            connection.close()
            return connection

        return run

    return Probe(
        "pool checkout + checkin: pool_pre_ping (before) vs make_engine (no ping)",
        checkout(pinging),
        checkout(engine),
        "one round trip (';' in autocommit) per checkout",
        pinging.dispose,
    )


def run_backend(backend: str, server_url: str, calls: int, rounds: int) -> list[list[str]]:
    rows = []

    def measure(probe: Probe) -> None:
        try:
            ours, cheap = _measure(probe, calls, rounds)
        finally:
            probe.close()
        rows.append(
            [backend, probe.name, f"{ours:.1f}", f"{cheap:.1f}", f"{ours - cheap:.1f}", probe.note]
        )

    with support.throwaway_database(backend, server_url) as database:
        engine = make_engine(database.url)
        service = CaseService(SqlUnitOfWorkFactory(engine), FakeClock(support.T0), load_policy())
        case_id = support.submit_with_order(service, support.application("o-probe")).case.id
        assert case_id is not None
        with SqlUnitOfWorkFactory(engine)() as uow:
            uow.cases.get(case_id)  # begins the transaction the probes read in
            for probe in _read_probes(database, uow, case_id):
                measure(probe)
        measure(_transaction_probe(database))
        if backend == "postgres":
            measure(_ping_probe(database))
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
