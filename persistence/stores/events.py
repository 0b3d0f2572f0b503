"""Inbound events recorded for dedupe, and dead letters: ``workflow.ports.EventStore``."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from persistence.fastsql import Prepared
from persistence.mappers import dead_letter_from_row, dead_letter_values
from persistence.statements import KNOWN_EVENTS_CHUNK
from persistence.stores.base import SqlStore, Transaction
from persistence.stores.cases import SqlCaseRepository
from workflow.errors import recorded_meanwhile
from workflow.model import DeadLetter, DeadLetterStatus


class SqlEventStore(SqlStore):
    def __init__(self, uow: Transaction, cases: SqlCaseRepository) -> None:
        super().__init__(uow)
        # Read with a recorded event: the case it names, with its live timer.
        self._cases = cases
        # What ``recorded`` answered "not recorded" in this transaction (a batch's start).
        self._not_recorded: set[tuple[str, str]] = set()

    def forget_read(self) -> None:
        self._not_recorded.clear()

    def record(self, source: str, event_id: str, case_id: int | None, at: datetime) -> bool:
        """One statement, in the cheapest form the transaction allows (``EventStore.record``).

        For a case this transaction holds no current copy of (the caller reads it next), on
        PostgreSQL the record reads it too: one round trip for both. For an event this
        transaction read as not recorded, a checked write sent with the next statement. Else
        a plain INSERT ... ON CONFLICT DO NOTHING."""
        uow = self._uow
        params = {"source": source, "event_id": event_id, "case_id": case_id, "received_at": at}
        record = uow.statements.record_event
        if case_id is None:
            return self._run(record.execute, params) == 1
        uow.once_by_record = True
        if not self._cases.holds_current(case_id):
            reading = uow.statements.record_event_reading_case
            if reading is None:  # SQLite: no INSERT inside WITH, and no round trips to save
                return self._run(record.execute, params) == 1
            row = self._run(reading.first, {**params, "read_case_id": case_id})
            assert row is not None  # one row always
            case = self._cases.with_timer(row[1:]) if row[1] is not None else None
            self._cases.read_with_record(case_id, case)
            return bool(row[0] == 1)
        if (source, event_id) in self._not_recorded:
            self._run_checked(record, params, lambda: recorded_meanwhile(source, event_id))
            return True
        return self._run(record.execute, params) == 1

    def recorded(self, ids: Sequence[tuple[str, str]]) -> set[tuple[str, str]]:
        found = self._read_recorded(ids)
        self._not_recorded.update(pair for pair in ids if pair not in found)
        return found

    def _read_recorded(self, ids: Sequence[tuple[str, str]]) -> set[tuple[str, str]]:
        return self._pairs(self._uow.statements.select_recorded_events, ids)

    def known(self, ids: Sequence[tuple[str, str]]) -> set[tuple[str, str]]:
        return self._pairs(self._uow.statements.select_known_events, ids)

    def _pairs(self, statement: Prepared, ids: Sequence[tuple[str, str]]) -> set[tuple[str, str]]:
        found: set[tuple[str, str]] = set()
        for start in range(0, len(ids), KNOWN_EVENTS_CHUNK):
            chunk = list(ids[start : start + KNOWN_EVENTS_CHUNK])
            chunk += [chunk[-1]] * (KNOWN_EVENTS_CHUNK - len(chunk))
            params = {}
            for i, (source, event_id) in enumerate(chunk):
                params[f"source_{i}"], params[f"event_id_{i}"] = source, event_id
            found.update((row[0], row[1]) for row in self._run(statement.rows, params))
        return found

    def dead_letter(self, letter: DeadLetter) -> int:
        """Insert, or for a known (source, event_id) count one more attempt and keep the newest
        reason, code and envelope; ``received_at`` stays the first delivery's and ``status``
        stays as it is (a discarded letter is not reopened by a redelivery)."""
        letter_id = self._run(
            self._uow.statements.store_dead_letter.insert, dead_letter_values(letter)
        )
        letter.id = letter_id
        return letter_id

    def dead_letters(
        self,
        status: DeadLetterStatus | None = DeadLetterStatus.OPEN,
        after_id: int | None = None,
        limit: int = 50,
    ) -> list[DeadLetter]:
        """Oldest first; page with ``after_id`` (the last id of the previous page)."""
        sql = self._uow.statements
        params: dict[str, Any] = {"after_id": after_id or 0, "limit": limit}
        if status is None:
            rows = self._run(sql.select_dead_letters.rows, params)
        else:
            params["status"] = status.value
            rows = self._run(sql.select_dead_letters_by_status.rows, params)
        return [dead_letter_from_row(row) for row in rows]

    def get_dead_letter(self, letter_id: int) -> DeadLetter | None:
        row = self._run(self._uow.statements.select_dead_letter.first, {"letter_id": letter_id})
        return dead_letter_from_row(row) if row is not None else None

    def resolve_dead_letter(
        self,
        letter_id: int,
        status: DeadLetterStatus,
        at: datetime,
        by: str | None = None,
        reason: str | None = None,
    ) -> None:
        """Set the status; ``resolved_at`` is ``at``, or cleared when reopened (``OPEN``)."""
        reopened = status is DeadLetterStatus.OPEN
        params = {
            "where_id": letter_id,
            "status": status.value,
            "resolved_at": None if reopened else at,
            "resolved_by": None if reopened else by,
            "resolution": None if reopened else reason,
        }
        if self._run(self._uow.statements.resolve_dead_letter.execute, params) != 1:
            raise KeyError(f"no dead letter {letter_id}")
