"""The timers: ``workflow.ports.TimerStore``."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from datetime import datetime
from typing import Any

from sqlalchemy.exc import IntegrityError

from persistence.checkout import Checkout
from persistence.mappers import timer_from_row, timer_values
from persistence.sql_errors import unique_violation
from persistence.stores.base import P, R, SqlStore, Transaction
from workflow.errors import Conflict
from workflow.model import Timer, TimerStatus


class SqlTimerStore(SqlStore):
    def __init__(self, uow: Transaction) -> None:
        super().__init__(uow)
        # Live timers read with their case (``SqlCaseRepository.get`` and ``get_many``):
        # ``pending`` answers from them. A write to one case's timers forgets that case's, any
        # other timer write, a commit, a rollback and a savepoint rolled back forget them all.
        self._read: dict[int, Timer | None] = {}

    def read_with_case(self, case_id: int, timer: Timer | None) -> None:
        self._read[case_id] = timer

    def forget_read(self) -> None:
        self._read.clear()

    def _run(self, run: Callable[[Checkout, P], R], params: P) -> R:
        # Every statement of this store but the reads below writes timers.
        self._read.clear()
        return super()._run(run, params)

    def _run_for(self, case_id: int, run: Callable[[Checkout, P], R], params: P) -> R:
        """``_run`` for a write to ``case_id``'s timers only."""
        self._read.pop(case_id, None)
        return super()._run(run, params)

    def pending(self, case_id: int) -> Timer | None:
        if case_id in self._read:
            timer = self._read[case_id]
            return replace(timer) if timer is not None else None
        row = super()._run(self._uow.statements.select_live_timer.first, {"case_id": case_id})
        return timer_from_row(row) if row is not None else None

    def disarm(self, case_id: int) -> None:
        self._run_for(case_id, self._uow.statements.disarm.defer_many, [{"where_case_id": case_id}])

    def arm(self, timer: Timer) -> None:
        sql = self._uow.statements
        try:
            values = timer_values(timer)
            # Made once by its own record, the unit of work reads no new timer's id.
            if not self._uow.once_by_record:
                timer.id = self._run_for(timer.case_id, sql.insert_timer.insert, values)
            else:
                # A lost race (a live timer already) surfaces at a later statement, where
                # ``SqlStore._run`` turns the deferred unique violation into a Conflict too.
                self._run_for(timer.case_id, sql.insert_timer_deferred.defer_many, [values])
        except IntegrityError as exc:
            if unique_violation(exc):
                raise Conflict(f"case {timer.case_id} already has a live timer") from exc
            raise

    def reschedule(self, timer_id: int, due_at: datetime, version: int) -> None:
        params = {"where_id": timer_id, "due_at": due_at, "version": version}
        if self._run(self._uow.statements.reschedule.execute, params) != 1:
            raise KeyError(f"no timer {timer_id}")

    def due(self, as_of: datetime, limit: int) -> list[Timer]:
        rows = self._run(self._uow.statements.select_due.rows, {"as_of": as_of, "limit": limit})
        return [timer_from_row(row) for row in rows]

    def get(self, timer_id: int) -> Timer | None:
        row = self._run(self._uow.statements.select_timer.first, {"timer_id": timer_id})
        return timer_from_row(row) if row is not None else None

    def cancel_stale(self, timer: Timer, at: datetime) -> bool:
        """One UPDATE: the lateness comes from the ``due_at`` the caller read with the timer,
        and the WHERE on the live status and the version makes a finished or rescheduled
        timer a no-op (False) instead of a second read."""
        params = _finish_values(timer, at, fired=False)
        return self._run_for(timer.case_id, self._uow.statements.finish_live.execute, params) == 1

    def mark_fired(self, timer: Timer, fired_at: datetime) -> None:
        """The UPDATE of ``cancel_stale``, deferred: its answer is the caller's compare-and-set."""
        self._uow.once_by_record = True
        finish = self._uow.statements.finish_live.defer_many
        self._run_for(timer.case_id, finish, [_finish_values(timer, fired_at)])

    def claim_due(
        self, as_of: datetime, limit: int, claimer: str, reclaim_before: datetime
    ) -> list[Timer]:
        params = {
            "as_of": as_of,
            "reclaim_before": reclaim_before,
            "limit": limit,
            "claim_at": as_of,
            "claimer": claimer,
        }
        claimed = [
            timer_from_row(row) for row in self._run(self._uow.statements.claim_due.rows, params)
        ]
        # RETURNING gives the rows in no particular order.
        claimed.sort(key=lambda timer: (timer.due_at, timer.id or 0))
        return claimed

    def lateness(self, since: datetime) -> list[int]:
        """Lateness of the timers that fired (not the stale ones cancelled when due), oldest
        firing first."""
        rows = self._run(self._uow.statements.select_lateness.rows, {"since": since})
        return [int(row[0]) for row in rows if row[0] is not None]


def _finish_values(timer: Timer, fired_at: datetime, fired: bool = True) -> dict[str, Any]:
    return {
        "where_id": timer.id,
        "where_version": timer.version,
        "status": (TimerStatus.FIRED if fired else TimerStatus.CANCELLED).value,
        "fired_at": fired_at,
        "lateness_ms": round((fired_at - timer.due_at).total_seconds() * 1000),
    }
