"""What the benchmarks share: throwaway databases, bulk seeding, verification, profiles, the
progress bar, round statistics and the machine description.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import pstats
import secrets
import shutil
import sqlite3
import statistics
import sys
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from importlib import metadata
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
)
from sqlalchemy.engine import Engine
from sqlalchemy.pool import NullPool

from config.settings import DatabaseSettings, Settings
from entrypoints.samples import import_orders_for
from entrypoints.worker import default_concurrency
from persistence.db import dispose_engine, make_engine, normalize_url
from persistence.migrate import upgrade
from workflow.model import Actor
from workflow.orders_service import OrderService
from workflow.service import CaseService, CaseView
from workflow.states import Role

POSTGRES_ENV = "AFTERSALES_TEST_POSTGRES_URL"
DEFAULT_POSTGRES_URL = "postgresql://postgres@127.0.0.1:5432/test"
BACKENDS = ("sqlite", "postgres")

#: The seeded cases were submitted at T0; the transitions run an hour later.
T0 = datetime(2026, 11, 20, 2, 0, tzinfo=UTC)
FIRED_AT = T0 + timedelta(hours=1)
MERCHANT = Actor(Role.MERCHANT, "m-1")
#: ``return_shipment`` in config/policy.toml: what approving arms.
RETURN_SHIPMENT = timedelta(hours=168)


def postgres_url(given: str | None) -> str:
    return given or os.environ.get(POSTGRES_ENV) or DEFAULT_POSTGRES_URL


def backends(choice: str) -> list[str]:
    return list(BACKENDS) if choice == "both" else [choice]


# -- throwaway databases -------------------------------------------------------------------------


@dataclass(frozen=True)
class Database:
    backend: str
    #: SQLAlchemy URL, what ``make_engine`` takes.
    url: str
    #: The SQLite file (sqlite).
    path: Path | None = None
    #: libpq connection string (postgres).
    conninfo: str | None = None


@contextmanager
def throwaway_database(backend: str, server_url: str) -> Iterator[Database]:
    """An empty database at the newest schema, dropped afterwards (as tests/integration does)."""
    if backend == "sqlite":
        directory = Path(tempfile.mkdtemp(prefix="aftersales-bench-"))
        path = directory / "bench.db"
        url = f"sqlite:///{path}"
        try:
            upgrade(url)
            yield Database("sqlite", url, path=path)
        finally:
            dispose_engine(url)
            shutil.rmtree(directory, ignore_errors=True)
        return
    server = normalize_url(server_url)
    admin = sa.create_engine(server, isolation_level="AUTOCOMMIT", poolclass=NullPool)
    name = f"aftersales_bench_{secrets.token_hex(6)}"
    url = server.set(database=name).render_as_string(hide_password=False)
    conninfo = server.set(drivername="postgresql", database=name).render_as_string(
        hide_password=False
    )
    with admin.connect() as connection:
        connection.exec_driver_sql(f'CREATE DATABASE "{name}"')
    try:
        upgrade(url)
        yield Database("postgres", url, conninfo=conninfo)
    finally:
        dispose_engine(url)
        with admin.connect() as connection:
            connection.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.dispose()


# -- seeding -------------------------------------------------------------------------------------


def application(order_id: str) -> dict[str, Any]:
    """The template application: a no-reason return of one shirt, delivered two days before T0."""
    return {
        "type": "return_refund",
        "order_id": order_id,
        "buyer_id": "b-1",
        "merchant_id": MERCHANT.id,
        "category": "clothing",
        "reason": "no_reason",
        "description": "too small",
        "payment": {
            "channel": "wechat_pay",
            "amount": 12_900,
            "paid_at": (T0 - timedelta(days=5)).isoformat(),
        },
        "delivered_at": (T0 - timedelta(days=2)).isoformat(),
        "items": [{"sku": "sku-1", "quantity": 1, "unit_price": 12_900}],
        "gifts": [],
    }


_CASE_COLUMNS = (
    "type, state, version, order_id, buyer_id, merchant_id, category, reason, description, "
    "payment_channel, paid_amount, paid_at, delivered_at, items, gifts, requested_amount, "
    "refund_amount, gift_deduction, refund_route, refund_attempts, refund_key, submission_key, "
    "details, created_at, updated_at, return_tracking_no, outbound_tracking_no"
)
_NUMBERS = "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < :count) "


def submit_with_order(service: CaseService, app: dict[str, Any]) -> CaseView:
    """Import the order of record ``app`` describes (as the order system would), then submit."""
    import_orders_for(OrderService(service.uow_factory, service.clock, service.policy), [app])
    return service.submit(app)


def seed_submitted_cases(service: CaseService, engine: Engine, count: int, tag: str) -> list[int]:
    """``count`` submitted cases, each with its submission log row and live ``merchant_review``
    timer, as ``CaseService.submit`` leaves them; returns their ids in order. Only the template's
    order has an order of record: the copies' transitions never read theirs.

    One case is submitted through the service; the others are set-based copies of its rows (much
    faster than submitting each, and the rows are the same but for ids and order ids).
    """
    template = submit_with_order(service, application(f"o-{tag}-template")).case.id
    assert template is not None
    return copy_case(engine, template, count, tag)


def copy_case(engine: Engine, template: int, count: int, tag: str) -> list[int]:
    """``count`` set-based copies of case ``template`` in whatever state it is: its case row
    (order id ``o-<tag>-<n>``), every log row and every timer; not its outbox rows, nor an order
    of record (the transitions measured never read it). Returns the copies' ids in order."""
    with engine.begin() as connection:
        first = connection.execute(sa.text("SELECT max(id) FROM cases")).scalar_one() + 1
        copied = _CASE_COLUMNS.replace("order_id", f"'o-{tag}-' || CAST(n.i AS TEXT)")
        connection.execute(
            sa.text(
                f"{_NUMBERS}INSERT INTO cases ({_CASE_COLUMNS}) "
                f"SELECT {copied} FROM cases, n WHERE cases.id = :template ORDER BY n.i"
            ),
            {"count": count, "template": template},
        )
        connection.execute(
            sa.text(
                'INSERT INTO transitions (case_id, seq, "trigger", from_state, to_state, actor, '
                "reason, data, at, idempotency_key) "
                'SELECT c.id, t.seq, t."trigger", t.from_state, t.to_state, t.actor, t.reason, '
                "t.data, t.at, t.idempotency_key FROM cases c, transitions t "
                "WHERE c.id >= :first AND t.case_id = :template ORDER BY c.id, t.seq"
            ),
            {"first": first, "template": template},
        )
        connection.execute(
            sa.text(
                'INSERT INTO timers (case_id, kind, "trigger", state, version, due_at, status, '
                "created_at) "
                'SELECT c.id, t.kind, t."trigger", t.state, t.version, t.due_at, t.status, '
                "t.created_at FROM cases c, timers t "
                "WHERE c.id >= :first AND t.case_id = :template ORDER BY c.id, t.id"
            ),
            {"first": first, "template": template},
        )
        ids = [
            int(row[0])
            for row in connection.execute(
                sa.text("SELECT id FROM cases WHERE id >= :first ORDER BY id"), {"first": first}
            )
        ]
    if engine.dialect.name == "postgresql":
        with engine.connect() as connection:
            connection.execute(sa.text("ANALYZE"))
            connection.commit()
    if len(ids) != count:
        raise RuntimeError(f"seeded {len(ids)} cases, wanted {count}")
    return ids


# -- verification --------------------------------------------------------------------------------


def approval_counts(engine: Engine, ids: Sequence[int]) -> dict[str, int]:
    """What approving each of ``ids`` once must have left: every count equals len(ids)."""
    wanted = set(ids)
    span = {"lo": min(ids), "hi": max(ids)}
    queries = {
        "cases approved at version 2": (
            "SELECT id FROM cases WHERE id BETWEEN :lo AND :hi "
            "AND state = 'approved' AND version = 2"
        ),
        "approve log rows": (
            "SELECT case_id FROM transitions WHERE case_id BETWEEN :lo AND :hi "
            "AND \"trigger\" = 'approve' AND seq = 2"
        ),
        "merchant_review timers cancelled": (
            "SELECT case_id FROM timers WHERE case_id BETWEEN :lo AND :hi "
            "AND kind = 'merchant_review' AND status = 'cancelled'"
        ),
        "return_shipment timers pending": (
            "SELECT case_id FROM timers WHERE case_id BETWEEN :lo AND :hi "
            "AND kind = 'return_shipment' AND status = 'pending'"
        ),
        "case.transitioned outbox rows": (
            "SELECT case_id FROM outbox WHERE case_id BETWEEN :lo AND :hi "
            "AND topic = 'case.transitioned'"
        ),
        "pickup.requested outbox rows": (
            "SELECT case_id FROM outbox WHERE case_id BETWEEN :lo AND :hi "
            "AND topic = 'pickup.requested'"
        ),
    }
    with engine.connect() as connection:
        return {
            name: sum(1 for row in connection.execute(sa.text(sql), span) if row[0] in wanted)
            for name, sql in queries.items()
        }


def written_rows(engine: Engine, case_id: int) -> dict[str, Any]:
    """Every row a case has, without ids, case ids and order ids: equal for two approved
    cases whichever path approved them."""
    anonymous = {"id", "case_id", "order_id"}

    def rows(sql: str) -> list[dict[str, Any]]:
        result = connection.execute(sa.text(sql), {"case_id": case_id}).mappings().all()
        cleaned = []
        for row in result:
            values = {k: v for k, v in row.items() if k not in anonymous}
            for key in ("details", "payload", "data", "items", "gifts"):
                if isinstance(values.get(key), str):
                    values[key] = json.loads(values[key])
                if isinstance(values.get(key), dict):
                    values[key] = {k: v for k, v in values[key].items() if k not in anonymous}
            cleaned.append(values)
        return cleaned

    with engine.connect() as connection:
        return {
            "cases": rows("SELECT * FROM cases WHERE id = :case_id"),
            "transitions": rows("SELECT * FROM transitions WHERE case_id = :case_id ORDER BY seq"),
            "timers": rows("SELECT * FROM timers WHERE case_id = :case_id ORDER BY id"),
            "outbox": rows("SELECT * FROM outbox WHERE case_id = :case_id ORDER BY id"),
        }


# -- profiles -------------------------------------------------------------------------------------

#: Where profiled time goes, by the file a function is in (first match wins).
_AREAS = (
    ("sqlite3.", "driver: sqlite3 (C, SQLite itself included)"),
    ("psycopg", "driver: psycopg (waiting for the server included)"),
    ("sqlalchemy/pool", "sqlalchemy: pool checkout/checkin"),
    ("sqlalchemy/engine", "sqlalchemy: Connection, transaction"),
    ("sqlalchemy", "sqlalchemy: type processors, other"),
    ("persistence/fastsql", "persistence/fastsql.py"),
    ("persistence/checkout", "persistence/checkout.py"),
    ("persistence/unit_of_work", "persistence/unit_of_work.py"),
    ("persistence/stores", "persistence/stores/"),
    ("persistence/mappers", "persistence/mappers.py"),
    ("persistence/types", "persistence/types.py (UTCDateTime)"),
    ("persistence/db", "persistence/db.py"),
    ("transitions/", "transitions (Machine)"),
    ("workflow/engine", "workflow/engine.py"),
    ("workflow/service", "workflow/service.py"),
    ("workflow/", "workflow/ (other)"),
    ("pydantic", "pydantic"),
    ("json", "json"),
    ("logging", "logging"),
    ("bench/", "bench/ (the loop)"),
)


def area(filename: str, function: str) -> str:
    where = f"{filename} {function}"
    for needle, area in _AREAS:
        if needle in where:
            return area
    if filename == "~":
        return "builtins (datetime, dict, enum, ...)"
    return "stdlib (enum, dataclasses, threading, ...)"


def areas_report(stats: pstats.Stats, count: int, unit: str) -> str:
    """Profiled time per ``unit`` by area (``_AREAS``), largest first."""
    areas: dict[str, float] = {}
    entries: dict[tuple[str, int, str], tuple[Any, ...]] = stats.stats  # type: ignore[attr-defined]
    for (filename, _line, function), (_cc, _nc, tottime, *_rest) in entries.items():
        name = area(filename, function)
        areas[name] = areas.get(name, 0.0) + tottime
    total = sum(areas.values())
    lines = [f"  {total / count * 1e6:7.1f} us per {unit} under cProfile (its overhead included)"]
    for name, seconds in sorted(areas.items(), key=lambda item: -item[1]):
        lines.append(f"  {seconds / count * 1e6:7.1f} us  {seconds / total:5.1%}  {name}")
    return "\n".join(lines) + "\n"


# -- rounds, progress, the machine ---------------------------------------------------------------


def median(values: Sequence[float]) -> float:
    return statistics.median(values)


def console() -> Console:
    """Wide enough for the tables when the output goes to a file."""
    return Console() if sys.stdout.isatty() else Console(width=120)


def progress(console: Console) -> Progress:
    # Few refreshes: the refresh thread competes with the measured loop for the GIL.
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
        refresh_per_second=2,
        transient=False,
    )


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def machine(server_url: str | None = None) -> dict[str, str]:
    """The facts a figure needs beside it."""
    facts = {
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "cpus": f"{os.cpu_count()} ({_cpu_model()})",
        "os": platform.platform(),
        "python": platform.python_version(),
        "sqlite": sqlite3.sqlite_version,
    }
    for package in ("sqlalchemy", "psycopg", "transitions", "pydantic", "sqlmodel"):
        try:
            facts[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            facts[package] = "-"
    if server_url is not None:
        try:
            engine = make_engine(server_url)
            with engine.connect() as connection:
                settings = [
                    str(connection.execute(sa.text(f"SHOW {name}")).scalar_one())
                    for name in ("server_version", "fsync", "synchronous_commit")
                ]
            facts["postgresql"] = (
                f"{settings[0]} (fsync={settings[1]}, synchronous_commit={settings[2]})"
            )
        except sa.exc.SQLAlchemyError as error:
            facts["postgresql"] = f"unreachable ({type(error).__name__})"
        finally:
            dispose_engine(server_url)
    return facts


def print_machine(console: Console, facts: dict[str, str]) -> None:
    console.print(" · ".join(f"[bold]{key}[/] {value}" for key, value in facts.items()))


# -- command-line options ------------------------------------------------------------------------


def add_concurrency_option(parser: argparse.ArgumentParser) -> None:
    """``--concurrency``: pool processes per worker, by default the worker's own on PostgreSQL."""
    own = default_concurrency(
        Settings(database=DatabaseSettings(url="postgresql://localhost/aftersales"))
    )
    parser.add_argument(
        "--concurrency",
        type=int,
        default=own,
        help=f"prefork children per worker (default {own}: the worker's own on PostgreSQL)",
    )
