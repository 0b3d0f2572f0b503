"""The outbox: ``workflow.ports.Outbox``."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from persistence.fastsql import Prepared
from persistence.mappers import outbox_entry_from_row
from persistence.stores.base import SqlStore
from workflow.model import OutboxEntry, OutboxMessage


class SqlOutbox(SqlStore):
    def add(self, messages: Sequence[OutboxMessage]) -> None:
        if not messages:
            return
        rows = [
            {
                "topic": m.topic,
                "case_id": m.case_id,
                "payload": m.payload,
                "created_at": m.created_at,
                "attempts": 0,
            }
            for m in messages
        ]
        self._run(self._uow.statements.insert_outbox.defer_many, rows)

    def unpublished(
        self,
        limit: int,
        created_before: datetime | None = None,
        redeliver_before: datetime | None = None,
    ) -> list[OutboxEntry]:
        sql = self._uow.statements
        params: dict[str, Any] = {"limit": limit}
        if created_before is None:
            fresh, lost = sql.select_unpublished, sql.select_undelivered
        else:
            fresh, lost = sql.select_unpublished_before, sql.select_undelivered_before
            params["created_before"] = created_before
        rows: list[list[Any]] = []
        if redeliver_before is not None:
            # The lost ones first: they have waited longest. Two statements, each on its own
            # partial index (migration 0006).
            rows = self._run(lost.rows, {**params, "redeliver_before": redeliver_before})
        if len(rows) < limit:
            rows += self._run(fresh.rows, {**params, "limit": limit - len(rows)})
        return [outbox_entry_from_row(row) for row in rows]

    def mark_published(self, ids: Sequence[int], at: datetime) -> None:
        sql = self._uow.statements
        self._mark(ids, at, sql.mark_published, sql.mark_published_any)

    def mark_completed(self, ids: Sequence[int], at: datetime) -> None:
        sql = self._uow.statements
        self._mark(ids, at, sql.mark_completed, sql.mark_completed_any)

    def _mark(
        self, ids: Sequence[int], at: datetime, per_row: Prepared, listed: Prepared | None
    ) -> None:
        """A deferred write of the rows ``ids``: one statement for them all where the database
        takes a list (``listed``), else one per row."""
        unique = list(dict.fromkeys(ids))
        if not unique:
            return
        if listed is not None and len(unique) > 1:
            self._run(listed.defer_many, [{"ids": unique, "at": at}])
        else:
            self._run(per_row.defer_many, [{"where_id": i, "at": at} for i in unique])

    def postpone(self, entry_id: int, until: datetime) -> None:
        self._run(self._uow.statements.postpone.execute, {"where_id": entry_id, "until": until})

    def park(self, ids: Sequence[int], at: datetime) -> None:
        rows = [{"where_id": i, "at": at} for i in dict.fromkeys(ids)]
        if rows:
            self._run(self._uow.statements.park.defer_many, rows)

    def parked(self, limit: int, after_id: int = 0) -> list[OutboxEntry]:
        rows = self._run(
            self._uow.statements.select_parked.rows, {"limit": limit, "after_id": after_id}
        )
        return [outbox_entry_from_row(row) for row in rows]

    def retry(self, entry_id: int, at: datetime, by: str, reason: str) -> OutboxEntry | None:
        sql = self._uow.statements
        row = self._run(sql.lock_parked.first, {"where_id": entry_id})
        if row is None:
            return None
        entry = outbox_entry_from_row(row)
        record = {
            "outbox_id": entry.id,
            "retried_by": by,
            "retried_at": at,
            "reason": reason,
            "attempts": entry.attempts,
            "parked_at": entry.parked_at,
        }
        self._run(sql.insert_outbox_retry.execute, record)
        self._run(sql.unpark.execute, {"where_id": entry.id})
        return entry

    def backlog(self) -> int:
        row = self._run(self._uow.statements.count_pending.first, {})
        return int(row[0]) if row is not None else 0

    def oldest_pending_age(self, now: datetime) -> float | None:
        row = self._run(self._uow.statements.oldest_pending.first, {})
        if row is None or row[0] is None:
            return None
        oldest: datetime = row[0]
        return max(0.0, (now - oldest).total_seconds())
