"""The raw-driver baseline of event ingestion: the statements ``EventService.ingest`` issues for
one ``merchant.approved`` event (dedupe record, the transition's writes), with the driver
directly, one transaction per event or per chunk.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Sequence
from datetime import datetime
from typing import Any

import psycopg
from psycopg.types.json import Jsonb

from bench import raw_baseline, support
from persistence.db import SQLITE_BUSY_TIMEOUT_MS
from persistence.statements import CASE_MUTABLE_COLUMNS

SOURCE = "merchant-portal"


def envelope(case_id: int) -> dict[str, Any]:
    return {
        "event_id": f"approve-{case_id}",
        "source": SOURCE,
        "type": "merchant.approved",
        "occurred_at": support.FIRED_AT.isoformat(),
        "case_id": case_id,
        "data": {"merchant_id": support.MERCHANT.id},
    }


_RECORD_SQLITE = (
    "INSERT INTO inbound_events (source, event_id, case_id, received_at) VALUES (?, ?, ?, ?) "
    "ON CONFLICT (source, event_id) DO NOTHING"
)
_RECORD_PG = (
    "INSERT INTO inbound_events (source, event_id, case_id, received_at) VALUES "
    "(%(source)s::VARCHAR, %(event_id)s::VARCHAR, %(case_id)s::BIGINT, "
    "%(received_at)s::TIMESTAMP WITH TIME ZONE) ON CONFLICT (source, event_id) DO NOTHING"
)


class RawEvents:
    """The statements ``EventService`` issues for an approval event, with the driver alone."""

    def __init__(self, database: support.Database, now: datetime = support.FIRED_AT) -> None:
        self.backend = database.backend
        self._now = now
        self._due = now + support.RETURN_SHIPMENT
        if database.backend == "sqlite":
            assert database.path is not None
            self._sqlite = sqlite3.connect(
                database.path, isolation_level=None, check_same_thread=False
            )
            for pragma in (
                "journal_mode=WAL",
                f"busy_timeout={SQLITE_BUSY_TIMEOUT_MS}",
                "foreign_keys=ON",
                "synchronous=NORMAL",
            ):
                self._sqlite.execute(f"PRAGMA {pragma}")
        else:
            assert database.conninfo is not None
            self._pg = psycopg.connect(database.conninfo)

    def ingest(self, case_ids: Sequence[int]) -> None:
        """One transaction for ``case_ids``; a savepoint per event when there are several."""
        if self.backend == "sqlite":
            self._sqlite_batch(case_ids)
        else:
            self._pg_batch(case_ids)

    def _sqlite_batch(self, case_ids: Sequence[int]) -> None:
        connection = self._sqlite
        at = raw_baseline._sqlite_time(self._now)
        due = raw_baseline._sqlite_time(self._due)
        savepoints = len(case_ids) > 1
        connection.execute("BEGIN IMMEDIATE")
        try:
            for case_id in case_ids:
                if savepoints:
                    connection.execute("SAVEPOINT event")
                row = connection.execute(raw_baseline._SQLITE_SELECT_CASE, (case_id,)).fetchone()
                event = envelope(case_id)
                connection.execute(_RECORD_SQLITE, (SOURCE, event["event_id"], case_id, at))
                connection.execute(raw_baseline._SQLITE_SELECT_TIMER, (case_id,)).fetchone()
                loaded = row[raw_baseline._VERSION]
                version = loaded + 1
                details = json.loads(row[raw_baseline._DETAILS])
                changed = connection.execute(
                    raw_baseline._SQLITE_UPDATE_CASE,
                    (
                        raw_baseline._TO_STATE,
                        version,
                        *(row[i] for i in _MUTABLE),
                        json.dumps(details, ensure_ascii=False),
                        at,
                        row[raw_baseline._RETURN_NO],
                        row[raw_baseline._OUTBOUND_NO],
                        case_id,
                        loaded,
                    ),
                ).rowcount
                if changed != 1:
                    raise raw_baseline.Refused(f"case {case_id} moved")
                key = f"event:{SOURCE}:{event['event_id']}"
                connection.execute(
                    raw_baseline._SQLITE_INSERT_TRANSITION,
                    (
                        case_id,
                        version,
                        *_LOGGED,
                        row[raw_baseline._STATE],
                        *_TO,
                        None,
                        "{}",
                        at,
                        key,
                    ),
                )
                connection.execute(raw_baseline._SQLITE_DISARM, ("cancelled", case_id))
                timer = (
                    case_id,
                    *raw_baseline._TIMER,
                    raw_baseline._TO_STATE,
                    version,
                    due,
                    "pending",
                    at,
                )
                connection.execute(
                    raw_baseline._SQLITE_INSERT_TIMER, (*timer, None, None, None, None)
                )
                connection.executemany(
                    raw_baseline._SQLITE_INSERT_OUTBOX,
                    [
                        (topic, case_id, json.dumps(payload, ensure_ascii=False), at, 0)
                        for topic, payload in raw_baseline._messages(row, version)
                    ],
                )
                if savepoints:
                    connection.execute("RELEASE SAVEPOINT event")
            connection.execute("COMMIT")
        except BaseException:
            connection.execute("ROLLBACK")
            raise

    def _pg_batch(self, case_ids: Sequence[int]) -> None:
        connection, now = self._pg, self._now
        savepoints = len(case_ids) > 1
        try:
            with connection.cursor() as cursor:
                for case_id in case_ids:
                    if savepoints:
                        cursor.execute("SAVEPOINT event")
                    cursor.execute(raw_baseline._PG_SELECT_CASE, {"case_id": case_id})
                    row = cursor.fetchone()
                    assert row is not None
                    event = envelope(case_id)
                    cursor.execute(
                        _RECORD_PG,
                        {
                            "source": SOURCE,
                            "event_id": event["event_id"],
                            "case_id": case_id,
                            "received_at": now,
                        },
                    )
                    cursor.execute(raw_baseline._PG_SELECT_TIMER, {"case_id": case_id})
                    cursor.fetchone()
                    loaded = row[raw_baseline._VERSION]
                    version = loaded + 1
                    cursor.execute(
                        raw_baseline._PG_UPDATE_CASE,
                        {
                            "state": raw_baseline._TO_STATE,
                            "version": version,
                            **{
                                name: row[i]
                                for name, i in zip(_MUTABLE_NAMES, _MUTABLE, strict=True)
                            },
                            "details": Jsonb(row[raw_baseline._DETAILS]),
                            "updated_at": now,
                            "return_tracking_no": row[raw_baseline._RETURN_NO],
                            "outbound_tracking_no": row[raw_baseline._OUTBOUND_NO],
                            "where_id": case_id,
                            "where_version": loaded,
                        },
                    )
                    if cursor.rowcount != 1:
                        raise raw_baseline.Refused(f"case {case_id} moved")
                    key = f"event:{SOURCE}:{event['event_id']}"
                    cursor.execute(
                        raw_baseline._PG_INSERT_TRANSITION,
                        {
                            "case_id": case_id,
                            "seq": version,
                            "trigger": raw_baseline._TRIGGER,
                            "from_state": row[raw_baseline._STATE],
                            "to_state": raw_baseline._TO_STATE,
                            "actor": raw_baseline._ACTOR,
                            "reason": None,
                            "data": Jsonb({}),
                            "at": now,
                            "idempotency_key": key,
                        },
                    )
                    cursor.execute(
                        raw_baseline._PG_DISARM, {"status": "cancelled", "where_case_id": case_id}
                    )
                    cursor.execute(
                        raw_baseline._PG_INSERT_TIMER,
                        raw_baseline.timer_row(case_id, version, self._due, now),
                    )
                    cursor.fetchone()
                    cursor.executemany(
                        raw_baseline._PG_INSERT_OUTBOX,
                        [
                            {
                                "topic": topic,
                                "case_id": case_id,
                                "payload": Jsonb(payload),
                                "created_at": now,
                                "attempts": 0,
                            }
                            for topic, payload in raw_baseline._messages(row, version)
                        ],
                    )
                    if savepoints:
                        cursor.execute("RELEASE SAVEPOINT event")
            connection.commit()
        except BaseException:
            connection.rollback()
            raise

    def close(self) -> None:
        if self.backend == "sqlite":
            self._sqlite.close()
        else:
            self._pg.close()


# The case columns an approval writes back unchanged, in UPDATE order after state and version.
_MUTABLE = (
    raw_baseline._DESCRIPTION,
    raw_baseline._REQUESTED,
    raw_baseline._REFUND,
    raw_baseline._DEDUCTION,
    raw_baseline._ROUTE,
    raw_baseline._ATTEMPTS,
    raw_baseline._KEY,
)
# Their column names: what ``SqlCaseRepository.save`` writes, between version and details.
_MUTABLE_NAMES = CASE_MUTABLE_COLUMNS[2:9]
_LOGGED = (raw_baseline._TRIGGER,)
_TO = (raw_baseline._TO_STATE, raw_baseline._ACTOR)
