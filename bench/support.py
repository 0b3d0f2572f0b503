"""What the benchmarks share: throwaway databases, bulk seeding, the raw-driver baseline, the
progress bar, round statistics and the machine description.

The raw-driver baseline (``RawSqlite``, ``RawPostgres``) issues the statements the SQL unit of work
issues for a transition (``persistence/stores/``; the SQL text is the one SQLAlchemy compiles for
it), with the same connection settings, one transaction per transition:

    SELECT the case row, SELECT its live timer, UPDATE cases ... WHERE id AND version (compare and
    set), INSERT the log row, UPDATE timers SET status='cancelled' (disarm), INSERT the new timer,
    INSERT two outbox rows (one executemany), COMMIT.

Row values go through the driver's own conversions only (psycopg decodes jsonb and timestamptz;
sqlite3 returns text, of which the baseline decodes the ``details`` JSON it writes back).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import pstats
import secrets
import shutil
import signal
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from importlib import metadata
from pathlib import Path
from typing import Any, Protocol

import psycopg
import redis
import sqlalchemy as sa
from psycopg.types.json import Jsonb
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
from entrypoints.worker import default_concurrency
from persistence.db import SQLITE_BUSY_TIMEOUT_MS, dispose_engine, make_engine, normalize_url
from persistence.migrate import upgrade
from workflow.model import Actor
from workflow.service import CaseService
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


def seed_submitted_cases(service: CaseService, engine: Engine, count: int, tag: str) -> list[int]:
    """``count`` submitted cases, each with its submission log row, live ``merchant_review`` timer
    and order-item claim, as ``CaseService.submit`` leaves them; returns their ids in order.

    One case is submitted through the service; the others are set-based copies of its rows (much
    faster than submitting each, and the rows are the same but for ids and order ids).
    """
    template = service.submit(application(f"o-{tag}-template")).case.id
    assert template is not None
    return copy_case(engine, template, count, tag)


def copy_case(engine: Engine, template: int, count: int, tag: str) -> list[int]:
    """``count`` set-based copies of case ``template`` in whatever state it is: its case row
    (order id ``o-<tag>-<n>``), every log row, every timer and its order-item claims; not its
    outbox rows. Returns the copies' ids in order."""
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
        connection.execute(
            sa.text(
                "INSERT INTO open_case_items (order_id, sku, case_id) "
                "SELECT c.order_id, o.sku, c.id FROM cases c, open_case_items o "
                "WHERE c.id >= :first AND o.case_id = :template ORDER BY c.id"
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


# -- the raw-driver baseline ---------------------------------------------------------------------


class RawPath(Protocol):
    def transition(self, case_id: int) -> None:
        """Approve the case: one transaction of the statements above."""
        ...

    def close(self) -> None: ...


_CASE_SELECT_LIST = (
    "cases.id, cases.type, cases.state, cases.version, cases.order_id, cases.buyer_id, "
    "cases.merchant_id, cases.category, cases.reason, cases.description, cases.payment_channel, "
    "cases.paid_amount, cases.paid_at, cases.delivered_at, cases.items, cases.gifts, "
    "cases.requested_amount, cases.refund_amount, cases.gift_deduction, cases.refund_route, "
    "cases.refund_attempts, cases.refund_key, cases.submission_key, cases.details, "
    "cases.created_at, cases.updated_at, cases.return_tracking_no, cases.outbound_tracking_no"
)
_TIMER_SELECT_LIST = (
    "timers.id, timers.case_id, timers.kind, timers.{trigger}, timers.state, timers.version, "
    "timers.due_at, timers.status, timers.created_at, timers.claimed_at, timers.claimed_by, "
    "timers.fired_at, timers.lateness_ms"
)
_LIVE = "timers.status IN ('pending', 'claimed')"

# Positions in the case row.
_STATE, _VERSION, _ORDER, _BUYER, _MERCHANT, _DESCRIPTION = 2, 3, 4, 5, 6, 9
_REQUESTED, _REFUND, _DEDUCTION, _ROUTE, _ATTEMPTS, _KEY, _DETAILS = 16, 17, 18, 19, 20, 21, 23
_RETURN_NO, _OUTBOUND_NO = 26, 27

# What an approval writes.
_TRIGGER, _TO_STATE, _ACTOR = "approve", "approved", str(MERCHANT)
_TIMER = ("return_shipment", "expire_return")


def _messages(row: Sequence[Any], version: int) -> list[tuple[str, dict[str, Any]]]:
    """The outbox rows of an approval, as ``engine.messages_for`` builds them."""
    base = {"case_id": row[0], "seq": version, "state": _TO_STATE}
    return [
        (
            "case.transitioned",
            {
                **base,
                "trigger": _TRIGGER,
                "from_state": row[_STATE],
                "buyer_id": row[_BUYER],
                "merchant_id": row[_MERCHANT],
            },
        ),
        ("pickup.requested", {**base, "order_id": row[_ORDER]}),
    ]


class Refused(RuntimeError):
    """The compare-and-set touched no row (cannot happen in one process)."""


_SQLITE_SELECT_CASE = f"SELECT {_CASE_SELECT_LIST}  FROM cases  WHERE cases.id = ?"
_SQLITE_TIMER_COLUMNS = _TIMER_SELECT_LIST.format(trigger='"trigger"')
_SQLITE_SELECT_TIMER = (
    f"SELECT {_SQLITE_TIMER_COLUMNS}  FROM timers  WHERE timers.case_id = ? AND {_LIVE}"
)
_SQLITE_UPDATE_CASE = (
    "UPDATE cases SET state=?, version=?, description=?, requested_amount=?, refund_amount=?, "
    "gift_deduction=?, refund_route=?, refund_attempts=?, refund_key=?, details=?, updated_at=?, "
    "return_tracking_no=?, outbound_tracking_no=? WHERE cases.id = ? AND cases.version = ?"
)
_SQLITE_INSERT_TRANSITION = (
    'INSERT INTO transitions (case_id, seq, "trigger", from_state, to_state, actor, reason, data, '
    "at, idempotency_key) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)
_SQLITE_DISARM = f"UPDATE timers SET status=? WHERE timers.case_id = ? AND {_LIVE}"
_SQLITE_INSERT_TIMER = (
    'INSERT INTO timers (case_id, kind, "trigger", state, version, due_at, status, created_at, '
    "claimed_at, claimed_by, fired_at, lateness_ms) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)
_SQLITE_INSERT_OUTBOX = (
    "INSERT INTO outbox (topic, case_id, payload, created_at, attempts) VALUES (?, ?, ?, ?, ?)"
)


def _sqlite_time(moment: datetime) -> str:
    """How the UTCDateTime column stores an instant on SQLite (naive UTC, fixed width)."""
    return moment.astimezone(UTC).replace(tzinfo=None).strftime("%Y-%m-%d %H:%M:%S.%f")


class RawSqlite:
    """sqlite3 with the engine's settings: WAL, synchronous=NORMAL, BEGIN IMMEDIATE."""

    def __init__(self, path: Path, now: datetime = FIRED_AT) -> None:
        connection = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        for pragma in (
            "journal_mode=WAL",
            f"busy_timeout={SQLITE_BUSY_TIMEOUT_MS}",
            "foreign_keys=ON",
            "synchronous=NORMAL",
        ):
            connection.execute(f"PRAGMA {pragma}")
        self._connection = connection
        self._now = now
        self._at = _sqlite_time(now)
        self._due = _sqlite_time(now + RETURN_SHIPMENT)
        #: The last armed timer's id (read as the unit of work reads it).
        self.timer_id: int | None = None

    def transition(self, case_id: int) -> None:
        connection = self._connection
        at = self._at
        connection.execute("BEGIN IMMEDIATE")
        try:
            row = connection.execute(_SQLITE_SELECT_CASE, (case_id,)).fetchone()
            connection.execute(_SQLITE_SELECT_TIMER, (case_id,)).fetchone()
            loaded = row[_VERSION]
            version = loaded + 1
            details = json.loads(row[_DETAILS])
            changed = connection.execute(
                _SQLITE_UPDATE_CASE,
                (
                    _TO_STATE,
                    version,
                    row[_DESCRIPTION],
                    row[_REQUESTED],
                    row[_REFUND],
                    row[_DEDUCTION],
                    row[_ROUTE],
                    row[_ATTEMPTS],
                    row[_KEY],
                    json.dumps(details, ensure_ascii=False),
                    at,
                    row[_RETURN_NO],
                    row[_OUTBOUND_NO],
                    case_id,
                    loaded,
                ),
            ).rowcount
            if changed != 1:
                raise Refused(f"case {case_id} moved")
            connection.execute(
                _SQLITE_INSERT_TRANSITION,
                (case_id, version, _TRIGGER, row[_STATE], _TO_STATE, _ACTOR, None, "{}", at, None),
            )
            connection.execute(_SQLITE_DISARM, ("cancelled", case_id))
            timer = (case_id, *_TIMER, _TO_STATE, version, self._due, "pending", at)
            self.timer_id = connection.execute(
                _SQLITE_INSERT_TIMER, (*timer, None, None, None, None)
            ).lastrowid
            connection.executemany(
                _SQLITE_INSERT_OUTBOX,
                [
                    (topic, case_id, json.dumps(payload, ensure_ascii=False), at, 0)
                    for topic, payload in _messages(row, version)
                ],
            )
            connection.execute("COMMIT")
        except BaseException:
            connection.execute("ROLLBACK")
            raise

    def close(self) -> None:
        self._connection.close()


# The text SQLAlchemy compiles for psycopg, casts and RETURNING included.
_PG_SELECT_CASE = f"SELECT {_CASE_SELECT_LIST}  FROM cases  WHERE cases.id = %(case_id)s::BIGINT"
_PG_SELECT_TIMER = (
    f"SELECT {_TIMER_SELECT_LIST.format(trigger='trigger')}  FROM timers  "
    f"WHERE timers.case_id = %(case_id)s::BIGINT AND {_LIVE}"
)
_PG_UPDATE_CASE = (
    "UPDATE cases SET state=%(state)s::VARCHAR, version=%(version)s::INTEGER, "
    "description=%(description)s::VARCHAR, requested_amount=%(requested_amount)s::BIGINT, "
    "refund_amount=%(refund_amount)s::BIGINT, gift_deduction=%(gift_deduction)s::BIGINT, "
    "refund_route=%(refund_route)s::VARCHAR, refund_attempts=%(refund_attempts)s::INTEGER, "
    "refund_key=%(refund_key)s::VARCHAR, details=%(details)s::JSONB, "
    "updated_at=%(updated_at)s::TIMESTAMP WITH TIME ZONE, "
    "return_tracking_no=%(return_tracking_no)s::VARCHAR, "
    "outbound_tracking_no=%(outbound_tracking_no)s::VARCHAR "
    "WHERE cases.id = %(where_id)s::BIGINT AND cases.version = %(where_version)s::INTEGER"
)
_PG_INSERT_TRANSITION = (
    "INSERT INTO transitions (case_id, seq, trigger, from_state, to_state, actor, reason, data, "
    "at, idempotency_key) VALUES (%(case_id)s::BIGINT, %(seq)s::INTEGER, %(trigger)s::VARCHAR, "
    "%(from_state)s::VARCHAR, %(to_state)s::VARCHAR, %(actor)s::VARCHAR, %(reason)s::VARCHAR, "
    "%(data)s::JSONB, %(at)s::TIMESTAMP WITH TIME ZONE, %(idempotency_key)s::VARCHAR) "
    "RETURNING transitions.id"
)
_PG_DISARM = (
    "UPDATE timers SET status=%(status)s::VARCHAR "
    f"WHERE timers.case_id = %(where_case_id)s::BIGINT AND {_LIVE}"
)


def timer_row(case_id: int, version: int, due_at: datetime, now: datetime) -> dict[str, Any]:
    """The parameters of ``_PG_INSERT_TIMER``: the pending timer an approval arms."""
    return {
        "case_id": case_id,
        "kind": _TIMER[0],
        "trigger": _TIMER[1],
        "state": _TO_STATE,
        "version": version,
        "due_at": due_at,
        "status": "pending",
        "created_at": now,
        "claimed_at": None,
        "claimed_by": None,
        "fired_at": None,
        "lateness_ms": None,
    }


_PG_INSERT_TIMER = (
    "INSERT INTO timers (case_id, kind, trigger, state, version, due_at, status, created_at, "
    "claimed_at, claimed_by, fired_at, lateness_ms) VALUES (%(case_id)s::BIGINT, "
    "%(kind)s::VARCHAR, %(trigger)s::VARCHAR, %(state)s::VARCHAR, %(version)s::INTEGER, "
    "%(due_at)s::TIMESTAMP WITH TIME ZONE, %(status)s::VARCHAR, "
    "%(created_at)s::TIMESTAMP WITH TIME ZONE, %(claimed_at)s::TIMESTAMP WITH TIME ZONE, "
    "%(claimed_by)s::VARCHAR, %(fired_at)s::TIMESTAMP WITH TIME ZONE, %(lateness_ms)s::BIGINT) "
    "RETURNING timers.id"
)
_PG_INSERT_OUTBOX = (
    "INSERT INTO outbox (topic, case_id, payload, created_at, attempts) VALUES "
    "(%(topic)s::VARCHAR, %(case_id)s::BIGINT, %(payload)s::JSONB, "
    "%(created_at)s::TIMESTAMP WITH TIME ZONE, %(attempts)s::INTEGER) RETURNING outbox.id"
)


class RawPostgres:
    """psycopg 3, not autocommit (its implicit BEGIN, as under SQLAlchemy), READ COMMITTED."""

    def __init__(self, conninfo: str, now: datetime = FIRED_AT) -> None:
        self._connection = psycopg.connect(conninfo)
        self._now = now
        self._due = now + RETURN_SHIPMENT

    def transition(self, case_id: int) -> None:
        connection = self._connection
        now = self._now
        try:
            with connection.cursor() as cursor:
                cursor.execute(_PG_SELECT_CASE, {"case_id": case_id})
                row = cursor.fetchone()
                assert row is not None
                cursor.execute(_PG_SELECT_TIMER, {"case_id": case_id})
                cursor.fetchone()
                loaded = row[_VERSION]
                version = loaded + 1
                cursor.execute(
                    _PG_UPDATE_CASE,
                    {
                        "state": _TO_STATE,
                        "version": version,
                        "description": row[_DESCRIPTION],
                        "requested_amount": row[_REQUESTED],
                        "refund_amount": row[_REFUND],
                        "gift_deduction": row[_DEDUCTION],
                        "refund_route": row[_ROUTE],
                        "refund_attempts": row[_ATTEMPTS],
                        "refund_key": row[_KEY],
                        "details": Jsonb(row[_DETAILS]),
                        "updated_at": now,
                        "return_tracking_no": row[_RETURN_NO],
                        "outbound_tracking_no": row[_OUTBOUND_NO],
                        "where_id": case_id,
                        "where_version": loaded,
                    },
                )
                if cursor.rowcount != 1:
                    raise Refused(f"case {case_id} moved")
                cursor.execute(
                    _PG_INSERT_TRANSITION,
                    {
                        "case_id": case_id,
                        "seq": version,
                        "trigger": _TRIGGER,
                        "from_state": row[_STATE],
                        "to_state": _TO_STATE,
                        "actor": _ACTOR,
                        "reason": None,
                        "data": Jsonb({}),
                        "at": now,
                        "idempotency_key": None,
                    },
                )
                cursor.execute(_PG_DISARM, {"status": "cancelled", "where_case_id": case_id})
                cursor.execute(
                    _PG_INSERT_TIMER,
                    timer_row(case_id, version, self._due, now),
                )
                cursor.fetchone()
                cursor.executemany(
                    _PG_INSERT_OUTBOX,
                    [
                        {
                            "topic": topic,
                            "case_id": case_id,
                            "payload": Jsonb(payload),
                            "created_at": now,
                            "attempts": 0,
                        }
                        for topic, payload in _messages(row, version)
                    ],
                )
            connection.commit()
        except BaseException:
            connection.rollback()
            raise

    def close(self) -> None:
        self._connection.close()


def raw_path(database: Database, now: datetime = FIRED_AT) -> RawPath:
    if database.backend == "sqlite":
        assert database.path is not None
        return RawSqlite(database.path, now)
    assert database.conninfo is not None
    return RawPostgres(database.conninfo, now)


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


# -- worker processes: memory, a private Redis ----------------------------------------------------


def load_average() -> str:
    """``uptime``'s three load averages, printed beside every figure."""
    one, five, fifteen = os.getloadavg()
    return f"load {one:.2f} {five:.2f} {fifteen:.2f}"


def rss_kib(pid: int) -> int | None:
    """Resident set size of ``pid`` (``VmRSS`` in /proc/<pid>/status), None once it is gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except (FileNotFoundError, ProcessLookupError):
        return None
    return None  # a zombie has no VmRSS line


def child_pids(pid: int) -> list[int]:
    """The direct children of ``pid`` (prefork pool processes of a Celery worker)."""
    children: list[int] = []
    try:
        for task in Path(f"/proc/{pid}/task").iterdir():
            text = (task / "children").read_text()
            children.extend(int(child) for child in text.split())
    except (FileNotFoundError, ProcessLookupError):
        return []
    return sorted(set(children))


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


def free_port() -> int:
    """A TCP port nothing listens on now (the kernel's choice)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@contextmanager
def private_redis(folder: Path, deadline_s: float = 20.0) -> Iterator[str]:
    """A ``redis-server`` of this run only (no persistence), on a free port; its URL.

    Workers on the shared Redis would take other people's tasks, and theirs ours."""
    folder.mkdir(parents=True, exist_ok=True)
    port = free_port()
    server = subprocess.Popen(
        [
            "redis-server",
            "--bind",
            "127.0.0.1",
            "--port",
            str(port),
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(folder),
            "--logfile",
            str(folder / "redis.log"),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.STDOUT,
    )
    client = redis.Redis(port=port, socket_connect_timeout=0.5)
    try:
        deadline = time.monotonic() + deadline_s
        while True:
            if server.poll() is not None:
                raise RuntimeError(f"redis-server exited with {server.returncode}")
            try:
                if client.ping():
                    break
            except redis.RedisError:
                if time.monotonic() > deadline:
                    raise
            time.sleep(0.05)
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        client.close()
        server.terminate()
        try:
            server.wait(timeout=10)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait(timeout=10)


@dataclass
class Memory:
    """Resident memory of one role (a process, or the largest of a worker's pool children)."""

    first_kib: int = 0
    max_kib: int = 0
    last_kib: int = 0
    #: The largest reading in each phase the sampler was told about.
    by_phase: dict[str, int] = field(default_factory=dict)

    def add(self, kib: int, phase: str) -> None:
        if not self.first_kib:
            self.first_kib = kib
        self.max_kib = max(self.max_kib, kib)
        self.last_kib = kib
        self.by_phase[phase] = max(self.by_phase.get(phase, 0), kib)


class RssSampler:
    """Samples ``VmRSS`` of named processes (and of each one's children) in a thread.

    ``roles`` maps a role to a pid; the children of a pid are sampled as ``<role> child`` (the
    largest child at each sample), which is where a prefork worker runs its tasks.
    """

    def __init__(self, roles: dict[str, int], every_s: float = 0.5) -> None:
        self.roles = dict(roles)
        self.memory: dict[str, Memory] = {}
        self.phase = "start"
        self._every = every_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()

    def sample(self) -> None:
        for role, pid in self.roles.items():
            own = rss_kib(pid)
            if own is not None:
                self.memory.setdefault(role, Memory()).add(own, self.phase)
            children = [kib for kib in map(rss_kib, child_pids(pid)) if kib is not None]
            if children:
                self.memory.setdefault(f"{role} child", Memory()).add(max(children), self.phase)

    def _run(self) -> None:
        while not self._stop.wait(self._every):
            self.sample()


def stop_group(process: subprocess.Popen[bytes], grace_s: float = 30.0) -> None:
    """Warm shutdown (SIGTERM: Celery finishes running tasks), then SIGKILL to the process group,
    which takes the pool children a killed parent would leave behind."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        with suppress(subprocess.TimeoutExpired):
            process.wait(timeout=grace_s)
    with suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
    process.wait(timeout=30)
