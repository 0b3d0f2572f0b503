"""The raw-driver baseline: the statements the SQL unit of work issues for a transition
(``RawSqlite``, ``RawPostgres``), with the same connection settings, one transaction each:

    SELECT the case row, SELECT its live timer, UPDATE cases ... WHERE id AND version (compare and
    set), INSERT the log row, UPDATE timers SET status='cancelled' (disarm), INSERT the new timer,
    INSERT two outbox rows (one executemany), COMMIT.

Row values go through the driver's own conversions only (psycopg decodes jsonb and timestamptz;
sqlite3 returns text, of which the baseline decodes the ``details`` JSON it writes back).
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

import psycopg
from psycopg.types.json import Jsonb

from bench.support import FIRED_AT, MERCHANT, RETURN_SHIPMENT, Database
from persistence.db import SQLITE_BUSY_TIMEOUT_MS


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
