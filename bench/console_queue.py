"""Benchmark 5, the operations queue: the first page of the overdue queue among 1,000,000 cases
in PostgreSQL, beside baselines measured in the same run (issue 16 item 3; target < 100 ms of
server time).

One run: load ``--cases`` cases set-based (``generate_series`` in chunks, shown as a bar) into
a throwaway database at the newest schema, with the deadlines of a busy platform: 70 % of the
cases have a live timer, due from 10 days ago to 20 days ahead (a third overdue), and 70 % an
ended review deadline; then, in interleaved rounds (A, B, B, A ...), time

- ``CaseService.search`` of the overdue queue's first page (50 rows by deadline, as an admin);
- ``GET /cases?overdue=true&sort=deadline&limit=50`` through the app in-process (Starlette's
  test client: routing, authentication, validation, JSON; no socket);
- the same two for the unfiltered list's first page (``GET /cases?limit=50``, by id: the
  primary key), the cheapest page there is;

and, with ``EXPLAIN (ANALYZE)``, the database's own time of the queue's statement with the
indexes of migration 0011 and without them (dropped inside a transaction that is rolled back),
with a merchant's overdue queue beside it. Ends with the plans and a ``SUMMARY`` line.

    python -m bench.console_queue                      # 1,000,000 cases, ~3 min to load
    python -m bench.console_queue --cases 100000       # a smaller run
"""

from __future__ import annotations

import argparse
import contextlib
import json
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from fastapi.testclient import TestClient
from rich.console import Console
from rich.progress import Progress
from rich.table import Table
from sqlalchemy.engine import Engine

from bench import support
from config.policy import load_policy
from config.settings import ApiSettings, BrokerSettings, DatabaseSettings, Settings
from entrypoints.composition import http_app
from persistence.case_search import SearchShape
from persistence.db import dispose_engine, make_engine
from persistence.statements import statements_for
from persistence.tokens import SqlTokenStore
from persistence.unit_of_work import SqlUnitOfWorkFactory
from workflow.clock import FakeClock
from workflow.model import Actor
from workflow.queries import CaseQuery, CaseSort
from workflow.service import CaseService
from workflow.states import Role

#: The instant the queue is read at.
NOW = datetime(2026, 12, 7, 12, 0, tzinfo=UTC)
CHUNK = 50_000
PAGE = 50
MERCHANTS = 1_000
ADMIN = Actor(Role.ADMIN)
#: Migration 0011's indexes the queue and its filters read (the baseline drops them).
NEW_INDEXES = (
    "ix_timers_live_due_at_case_id",
    "ix_timers_case_id",
    "ix_cases_created_at_id",
    "ix_cases_merchant_id_state_id",
    "ix_transitions_disputed_case_id",
)

#: By ``n % 10``: the case's state and its live timer's kind (None: no live timer).
_STATES = [
    ("submitted", "merchant_review", "auto_approve"),
    ("submitted", "merchant_review", "auto_approve"),
    ("submitted", "merchant_review", "auto_approve"),
    ("approved", "return_shipment", "expire_return"),
    ("shipped_back", "return_transit", "escalate"),
    ("return_delivered", "merchant_receipt", "auto_receive"),
    ("received", "merchant_inspection", "deem_inspected"),
    ("refunded", None, None),
    ("closed", None, None),
    ("disputed", None, None),
]


def _pick(column: int) -> str:
    """A SQL CASE choosing column ``column`` of ``_STATES`` by ``n % 10``."""
    arms = " ".join(f"WHEN {i} THEN {_literal(row[column])}" for i, row in enumerate(_STATES))
    return f"CASE n % 10 {arms} END"


def _literal(value: str | None) -> str:
    return "NULL" if value is None else f"'{value}'"


# Each copy of the template case: its own order, buyer, merchant (1 of 1,000), state, parcel,
# and a submission time spread over 60 days in an order unrelated to its id.
_CREATED = "CAST(:now AS timestamptz) - ((n * 7919) % 5184000) * interval '1 second'"
_COPY_COLUMNS = {
    "state": _pick(0),
    "order_id": "'o-' || n",
    "buyer_id": "'b-' || (n % 200000)",
    "merchant_id": f"'m-' || (n % {MERCHANTS})",
    "submission_key": "NULL",
    "created_at": _CREATED,
    "updated_at": _CREATED,
    "return_tracking_no": "CASE WHEN n % 10 BETWEEN 4 AND 6 THEN 'SF' || n END",
}


@dataclass(frozen=True)
class Loaded:
    database: support.Database
    engine: Engine
    cases: int
    live_timers: int
    overdue: int
    seconds: float


def load(database: support.Database, cases: int, progress: Progress) -> Loaded:
    """One case submitted through the service as the template, then ``cases`` set-based
    copies of its row with their timers, in chunks; VACUUM ANALYZE at the end."""
    started = time.monotonic()
    engine = make_engine(database.url)
    # Submitted when its order was recent (the no-reason window); the copies get their own times.
    clock = FakeClock(support.T0)
    service = CaseService(SqlUnitOfWorkFactory(engine), clock, load_policy())
    template = support.submit_with_order(service, support.application("o-template")).case.id
    columns = [c.strip() for c in support._CASE_COLUMNS.split(",")]
    selected = ", ".join(_COPY_COLUMNS.get(c, f"cases.{c}") for c in columns)
    task = progress.add_task("load: cases + timers", total=cases)
    with engine.begin() as connection:
        connection.execute(sa.text("DELETE FROM timers WHERE case_id = :t"), {"t": template})
    for low in range(1, cases + 1, CHUNK):
        high = min(low + CHUNK - 1, cases)
        with engine.begin() as connection:
            first = connection.execute(sa.text("SELECT max(id) + 1 FROM cases")).scalar_one()
            connection.execute(
                sa.text(
                    f"INSERT INTO cases ({support._CASE_COLUMNS}) SELECT {selected} "
                    "FROM cases, generate_series(CAST(:lo AS bigint), CAST(:hi AS bigint)) AS n "
                    "WHERE cases.id = :t ORDER BY n"
                ),
                {"lo": low, "hi": high, "t": template, "now": NOW},
            )
            # n again from the id (one sequence, one session): the live timer of the state,
            # due from 10 days ago to 20 days ahead; and an ended review deadline for the
            # cases past the review.
            n = "(c.id - :first + :lo)"
            connection.execute(
                sa.text(
                    'INSERT INTO timers (case_id, kind, "trigger", state, version, due_at, '
                    "status, created_at) "
                    f"SELECT c.id, {_pick(1).replace('n %', f'{n} %')}, "
                    f"{_pick(2).replace('n %', f'{n} %')}, c.state, 1, "
                    "CAST(:now AS timestamptz) - interval '10 days' + "
                    f"(({n} * 104729) % 2592000) * interval '1 second', 'pending', c.created_at "
                    f"FROM cases c WHERE c.id >= :first AND {n} % 10 < 7 ORDER BY c.id"
                ),
                {"first": first, "lo": low, "now": NOW},
            )
            connection.execute(
                sa.text(
                    'INSERT INTO timers (case_id, kind, "trigger", state, version, due_at, '
                    "status, created_at, fired_at) "
                    "SELECT c.id, 'merchant_review', 'auto_approve', 'submitted', 1, "
                    "c.created_at + interval '48 hours', "
                    f"CASE WHEN {n} % 4 = 0 THEN 'fired' ELSE 'cancelled' END, c.created_at, "
                    "c.created_at + interval '48 hours' "
                    f"FROM cases c WHERE c.id >= :first AND {n} % 10 >= 3 ORDER BY c.id"
                ),
                {"first": first, "lo": low},
            )
        progress.update(task, completed=high)
    vacuum = progress.add_task("load: VACUUM ANALYZE", total=1)
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as connection:
        connection.execute(sa.text("VACUUM ANALYZE cases"))
        connection.execute(sa.text("VACUUM ANALYZE timers"))
    progress.update(vacuum, completed=1)
    with engine.connect() as connection:
        counts = connection.execute(
            sa.text(
                "SELECT (SELECT count(*) FROM cases), "
                "(SELECT count(*) FROM timers WHERE status = 'pending'), "
                "(SELECT count(*) FROM timers WHERE status = 'pending' AND due_at <= :now)"
            ),
            {"now": NOW},
        ).one()
    return Loaded(
        database, engine, int(counts[0]), int(counts[1]), int(counts[2]), time.monotonic() - started
    )


# -- measuring -----------------------------------------------------------------------------------


@contextlib.contextmanager
def served(database: support.Database, folder: Path) -> Iterator[tuple[TestClient, dict[str, str]]]:
    """The app in-process on the loaded database, and an admin's headers."""
    settings = Settings(
        database=DatabaseSettings(url=database.url),
        broker=BrokerSettings(url=f"filesystem://{folder / 'broker'}"),
        api=ApiSettings(rate_limit_per_minute=0),
        policy_file=None,
        clock_file=None,
    )
    app = http_app(settings, FakeClock(NOW))
    _, secret = SqlTokenStore(make_engine(database.url)).create("admin", None, "bench", NOW)
    with TestClient(app) as client:
        yield client, {"Authorization": f"Bearer {secret}"}


@contextlib.contextmanager
def loaded_and_served(
    console: Console, server: str | None, cases: int, name: str
) -> Iterator[tuple[Progress, Loaded, TestClient, dict[str, str]]]:
    """Prints the machine, loads ``cases`` into a throwaway PostgreSQL database (``load``) and
    serves the app in-process on it (``served``); drops the database on the way out. Yields the
    progress display, what was loaded, the client and an admin's headers."""
    console.print(support.machine(support.postgres_url(server)))
    with contextlib.ExitStack() as stack:
        bar = stack.enter_context(support.progress(console))
        folder = Path(tempfile.mkdtemp(prefix=f"aftersales-{name}-"))
        stack.callback(shutil.rmtree, folder, ignore_errors=True)
        database = stack.enter_context(
            support.throwaway_database("postgres", support.postgres_url(server))
        )
        loaded = load(database, cases, bar)
        client, headers = stack.enter_context(served(database, folder))
        yield bar, loaded, client, headers
        dispose_engine(database.url)


def _timed(call: Callable[[], Any]) -> float:
    started = time.perf_counter()
    call()
    return (time.perf_counter() - started) * 1000


def rounds(
    paths: dict[str, Callable[[], Any]], count: int, progress: Progress
) -> dict[str, list[float]]:
    """Milliseconds per call of each path, interleaved: forward then backward order per round."""
    for call in paths.values():
        call()  # warm: statements compiled, pages cached
    times: dict[str, list[float]] = {name: [] for name in paths}
    task = progress.add_task("measure: rounds", total=count)
    names = list(paths)
    for i in range(count):
        for name in names if i % 2 == 0 else reversed(names):
            times[name].append(_timed(paths[name]))
        progress.update(task, completed=i + 1)
    return times


def queue_sql(engine: Engine, merchant: bool) -> tuple[str, dict[str, Any]]:
    """The store's SQL of the overdue queue's first page (``persistence.case_search``)."""
    shape = SearchShape(
        equal=frozenset({"merchant_id"}) if merchant else frozenset(),
        states=0,
        text=False,
        text_id=False,
        due_before=True,
        disputed=None,
        sort=CaseSort.DEADLINE,
        descending=False,
        timed=True,
        after=False,
    )
    sql = statements_for(engine.dialect).case_search(shape).sql
    return sql, {"due_before": NOW, "limit": PAGE + 1, "merchant_id": "m-14"}


def explain(engine: Engine, merchant: bool, without_indexes: bool) -> tuple[float, str]:
    """The database's execution time (ms) of the queue's statement and its plan; without the
    new indexes in a transaction that drops them and rolls back."""
    sql, params = queue_sql(engine, merchant)
    with engine.connect() as connection:
        if without_indexes:
            for name in NEW_INDEXES:
                connection.exec_driver_sql(f"DROP INDEX {name}")
        found = connection.exec_driver_sql(f"EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) {sql}", params)
        document = found.scalar_one()
        plan = connection.exec_driver_sql(f"EXPLAIN (ANALYZE, COSTS OFF) {sql}", params)
        text = "\n".join(row[0] for row in plan)
        connection.rollback()
    data = document if isinstance(document, list) else json.loads(document)
    return float(data[0]["Execution Time"]), text


def explained(engine: Engine, count: int, progress: Progress) -> dict[str, list[float]]:
    variants = {
        "database: overdue queue, with 0011": (False, False),
        "database: overdue queue, without 0011": (False, True),
        "database: a merchant's overdue queue, with 0011": (True, False),
        "database: a merchant's overdue queue, without 0011": (True, True),
    }
    times: dict[str, list[float]] = {name: [] for name in variants}
    task = progress.add_task("measure: EXPLAIN ANALYZE", total=count)
    names = list(variants)
    for i in range(count):
        for name in names if i % 2 == 0 else reversed(names):
            times[name].append(explain(engine, *variants[name])[0])
        progress.update(task, completed=i + 1)
    return times


def report(console: Console, loaded: Loaded, times: dict[str, list[float]]) -> None:
    table = Table(title=f"first page ({PAGE} rows), ms; median of rounds (min - max)")
    table.add_column("path")
    table.add_column("median", justify="right")
    table.add_column("range", justify="right")
    for name, values in times.items():
        table.add_row(
            name, f"{statistics.median(values):.2f}", f"{min(values):.2f} - {max(values):.2f}"
        )
    console.print(table)


def options(description: str | None) -> argparse.ArgumentParser:
    """The options of the benchmarks on ``load``'s cases: how many, rounds timed, the server."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--cases", type=int, default=1_000_000)
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--server", help="PostgreSQL server URL (default: the tests')")
    return parser


def main() -> None:
    parser = options(__doc__.splitlines()[0])
    parser.add_argument("--explain-rounds", type=int, default=6)
    args = parser.parse_args()
    console = Console()
    with loaded_and_served(console, args.server, args.cases, "queue") as opened:
        bar, loaded, client, headers = opened
        service = CaseService(SqlUnitOfWorkFactory(loaded.engine), FakeClock(NOW), load_policy())
        overdue = CaseQuery(overdue=True, sort=CaseSort.DEADLINE, limit=PAGE)

        def get(params: dict[str, Any], rows: int = PAGE) -> Callable[[], Any]:
            def call() -> None:
                response = client.get("/cases", params=params, headers=headers)
                assert response.status_code == 200, response.text
                assert len(response.json()["cases"]) == rows

            return call

        paths: dict[str, Callable[[], Any]] = {
            "service: overdue queue": lambda: service.search(overdue, ADMIN),
            "service: unfiltered list (baseline)": lambda: service.search(
                CaseQuery(limit=PAGE), ADMIN
            ),
            "HTTP: overdue queue": get({"overdue": "true", "sort": "deadline", "limit": PAGE}),
            "HTTP: unfiltered list (baseline)": get({"limit": PAGE}),
            # Beside the target: a search and the "due within a day" queue, for their plans.
            "HTTP: search by tracking number": get({"q": "SF4", "limit": PAGE}, rows=1),
            "HTTP: due within 24 h, by deadline": get(
                {"deadline_within_hours": 24, "sort": "deadline", "limit": PAGE}
            ),
        }
        times = rounds(paths, args.rounds, bar)
        times |= explained(loaded.engine, args.explain_rounds, bar)
        plans = {
            "with 0011": explain(loaded.engine, False, False)[1],
            "without 0011": explain(loaded.engine, False, True)[1],
            "merchant, with 0011": explain(loaded.engine, True, False)[1],
        }
    console.print(
        f"loaded {loaded.cases:,} cases, {loaded.live_timers:,} live timers "
        f"({loaded.overdue:,} overdue) in {loaded.seconds:.0f} s"
    )
    report(console, loaded, times)
    for name, plan in plans.items():
        console.print(f"\nplan of the overdue queue's statement, {name}:\n{plan}")
    median = {name: statistics.median(values) for name, values in times.items()}
    console.print(
        f"SUMMARY cases={loaded.cases} "
        f"service_overdue_ms={median['service: overdue queue']:.2f} "
        f"http_overdue_ms={median['HTTP: overdue queue']:.2f} "
        f"http_unfiltered_ms={median['HTTP: unfiltered list (baseline)']:.2f} "
        f"db_with_0011_ms={median['database: overdue queue, with 0011']:.2f} "
        f"db_without_0011_ms={median['database: overdue queue, without 0011']:.2f} "
        f"target_http_under_100ms={'yes' if median['HTTP: overdue queue'] < 100 else 'NO'}"
    )


if __name__ == "__main__":
    main()
