"""The transition log and its idempotency keys: ``workflow.ports.TransitionLog``."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from sqlalchemy.exc import IntegrityError

from persistence.fastsql import Prepared
from persistence.mappers import record_from_row, record_values
from persistence.sql_errors import unique_violation
from persistence.stores.base import SqlStore, Transaction
from workflow.errors import Conflict
from workflow.model import TransitionRecord


class SqlTransitionLog(SqlStore):
    def __init__(self, uow: Transaction) -> None:
        super().__init__(uow)
        # Keys this transaction registered: a call that appends its records in several batches
        # is one call, not a replay of itself.
        self._registered: set[tuple[int, str]] = set()

    def forget_keys(self) -> None:
        self._registered.clear()

    def registered_keys(self) -> frozenset[tuple[int, str]]:
        return frozenset(self._registered)

    def restore_keys(self, keys: frozenset[tuple[int, str]]) -> None:
        self._registered = set(keys)

    def append(self, records: Sequence[TransitionRecord]) -> None:
        if not records:
            return
        # In a unit of work made once by its own record the key only labels the rows.
        register_key = not self._uow.once_by_record
        sql = self._uow.statements
        first_seqs: dict[tuple[int, str], int] = {}
        for record in records:
            if register_key and record.idempotency_key:
                slot = (record.case_id, record.idempotency_key)
                if slot not in self._registered:
                    first_seqs[slot] = min(first_seqs.get(slot, record.seq), record.seq)
        if first_seqs:
            keys = [
                {"case_id": case_id, "key": key, "first_seq": seq}
                for (case_id, key), seq in first_seqs.items()
            ]
            # Registered before the records so that a replay fails on the key, not on a seq.
            self._insert(
                sql.insert_key,
                keys,
                lambda: f"idempotency key {', '.join(k for _, k in first_seqs)} was already used",
            )
            self._registered.update(first_seqs)
        self._insert(
            sql.insert_transition,
            [record_values(record) for record in records],
            lambda: (
                f"the log already has entry {', '.join(f'{r.case_id}#{r.seq}' for r in records)}"
            ),
        )

    def _insert(
        self, statement: Prepared, rows: list[dict[str, Any]], conflict: Callable[[], str]
    ) -> None:
        try:
            self._run(statement.defer_many, rows)
        except IntegrityError as exc:
            if unique_violation(exc):
                raise Conflict(conflict()) from exc
            raise

    def by_key(self, case_id: int, key: str) -> list[TransitionRecord]:
        params = {"case_id": case_id, "key": key}
        return [
            record_from_row(r)
            for r in self._run(self._uow.statements.select_log_by_key.rows, params)
        ]

    def for_case(self, case_id: int) -> list[TransitionRecord]:
        params = {"case_id": case_id}
        return [record_from_row(r) for r in self._run(self._uow.statements.select_log.rows, params)]
