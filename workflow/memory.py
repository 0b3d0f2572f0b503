"""In-memory stores: the unit of work for unit tests and the property-based test.

They keep the same contract as the SQL ones: writes become visible only on ``commit()``, a save
with a stale version writes nothing, and uniqueness violations raise ``Conflict`` at commit.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from types import TracebackType
from typing import Self

from workflow.errors import Conflict, PolicyRefusal
from workflow.model import Case, OutboxMessage, Timer, TimerStatus, TransitionRecord
from workflow.ports import CaseQuery
from workflow.states import CaseState

_NOT_REFUNDING = frozenset(
    {CaseState.CANCELLED, CaseState.CLOSED, CaseState.EXCHANGED, CaseState.REPAIRED}
)
_LIVE = (TimerStatus.PENDING, TimerStatus.CLAIMED)


@dataclass
class InMemoryDatabase:
    cases: dict[int, Case] = field(default_factory=dict)
    log: dict[int, list[TransitionRecord]] = field(default_factory=dict)
    timers: dict[int, Timer] = field(default_factory=dict)
    outbox: list[OutboxMessage] = field(default_factory=list)
    open_items: dict[tuple[str, str], int] = field(default_factory=dict)
    next_case_id: int = 1
    next_timer_id: int = 1


class InMemoryCaseRepository:
    def __init__(self, db: InMemoryDatabase) -> None:
        self._db = db

    def get(self, case_id: int) -> Case | None:
        case = self._db.cases.get(case_id)
        return copy.deepcopy(case) if case else None

    def add(self, case: Case) -> int:
        case.id = self._db.next_case_id
        self._db.next_case_id += 1
        for sku in case.skus:
            owner = self._db.open_items.get((case.order_id, sku))
            if owner is not None:
                raise PolicyRefusal(
                    "one_open_case_per_item",
                    f"{sku} of order {case.order_id} already has open case {owner}",
                )
            self._db.open_items[(case.order_id, sku)] = case.id
        self._db.cases[case.id] = copy.deepcopy(case)
        return case.id

    def save(self, case: Case, expected_version: int) -> bool:
        assert case.id is not None
        stored = self._db.cases.get(case.id)
        if stored is None or stored.version != expected_version:
            return False
        self._db.cases[case.id] = copy.deepcopy(case)
        return True

    def list(self, query: CaseQuery) -> list[Case]:
        found = []
        for case_id in sorted(self._db.cases):
            case = self._db.cases[case_id]
            if query.after_id is not None and case_id <= query.after_id:
                continue
            if any(
                wanted is not None and wanted != actual
                for wanted, actual in (
                    (query.state, case.state),
                    (query.type, case.type),
                    (query.merchant_id, case.merchant_id),
                    (query.buyer_id, case.buyer_id),
                    (query.order_id, case.order_id),
                )
            ):
                continue
            found.append(copy.deepcopy(case))
            if len(found) >= query.limit:
                break
        return found

    def open_cases_for_items(self, order_id: str, skus: Sequence[str]) -> dict[str, int]:
        return {
            sku: self._db.open_items[(order_id, sku)]
            for sku in skus
            if (order_id, sku) in self._db.open_items
        }

    def release_items(self, case_id: int) -> None:
        for key in [k for k, owner in self._db.open_items.items() if owner == case_id]:
            del self._db.open_items[key]

    def committed_refunds(self, order_id: str, exclude_case_id: int | None = None) -> int:
        return sum(
            case.refund_amount
            for case in self._db.cases.values()
            if case.order_id == order_id
            and case.id != exclude_case_id
            and case.state not in _NOT_REFUNDING
        )

    def lock_order(self, order_id: str) -> None:
        """One thread at a time in tests; nothing to lock."""

    def by_submission_key(self, key: str) -> Case | None:
        for case in self._db.cases.values():
            if case.submission_key == key:
                return copy.deepcopy(case)
        return None


class InMemoryTransitionLog:
    def __init__(self, db: InMemoryDatabase) -> None:
        self._db = db

    def append(self, records: Sequence[TransitionRecord]) -> None:
        for record in records:
            entries = self._db.log.setdefault(record.case_id, [])
            if any(e.seq == record.seq for e in entries):
                raise Conflict(f"case {record.case_id} already has log entry {record.seq}")
            if (
                record.idempotency_key
                and record is records[0]
                and any(e.idempotency_key == record.idempotency_key for e in entries)
            ):
                raise Conflict(f"idempotency key {record.idempotency_key} already used")
            entries.append(record)

    def by_key(self, case_id: int, key: str) -> list[TransitionRecord]:
        return [e for e in self._db.log.get(case_id, []) if e.idempotency_key == key]

    def for_case(self, case_id: int) -> list[TransitionRecord]:
        return list(self._db.log.get(case_id, []))


class InMemoryTimerStore:
    def __init__(self, db: InMemoryDatabase) -> None:
        self._db = db

    def pending(self, case_id: int) -> Timer | None:
        for timer in self._db.timers.values():
            if timer.case_id == case_id and timer.status in _LIVE:
                return replace(timer)
        return None

    def disarm(self, case_id: int) -> None:
        for timer in self._db.timers.values():
            if timer.case_id == case_id and timer.status in _LIVE:
                timer.status = TimerStatus.CANCELLED

    def arm(self, timer: Timer) -> None:
        if self.pending(timer.case_id) is not None:
            raise Conflict(f"case {timer.case_id} already has a live timer")
        timer.id = self._db.next_timer_id
        self._db.next_timer_id += 1
        self._db.timers[timer.id] = replace(timer)

    def reschedule(self, timer_id: int, due_at: datetime, version: int) -> None:
        timer = self._db.timers[timer_id]
        timer.due_at, timer.version = due_at, version

    def due(self, as_of: datetime, limit: int) -> list[Timer]:
        due = [
            t
            for t in self._db.timers.values()
            if t.status is TimerStatus.PENDING and t.due_at <= as_of
        ]
        due.sort(key=lambda t: (t.due_at, t.id or 0))
        return [replace(t) for t in due[:limit]]

    def get(self, timer_id: int) -> Timer | None:
        timer = self._db.timers.get(timer_id)
        return replace(timer) if timer else None

    def finish(self, timer_id: int, fired_at: datetime, fired: bool) -> None:
        timer = self._db.timers[timer_id]
        timer.status = TimerStatus.FIRED if fired else TimerStatus.CANCELLED
        timer.fired_at = fired_at


class InMemoryOutbox:
    def __init__(self, db: InMemoryDatabase) -> None:
        self._db = db

    def add(self, messages: Sequence[OutboxMessage]) -> None:
        self._db.outbox.extend(messages)


class InMemoryUnitOfWork:
    """Works on a copy of the database; ``commit()`` swaps the copy in."""

    def __init__(self, db: InMemoryDatabase) -> None:
        self._committed = db
        self._working = db

    def __enter__(self) -> Self:
        self._working = copy.deepcopy(self._committed)
        self.cases = InMemoryCaseRepository(self._working)
        self.log = InMemoryTransitionLog(self._working)
        self.timers = InMemoryTimerStore(self._working)
        self.outbox = InMemoryOutbox(self._working)
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._working = self._committed

    def commit(self) -> None:
        self._committed.__dict__.update(self._working.__dict__)
        self._working = copy.deepcopy(self._committed)
        self.cases = InMemoryCaseRepository(self._working)
        self.log = InMemoryTransitionLog(self._working)
        self.timers = InMemoryTimerStore(self._working)
        self.outbox = InMemoryOutbox(self._working)

    def rollback(self) -> None:
        self._working = copy.deepcopy(self._committed)


class InMemoryUnitOfWorkFactory:
    def __init__(self, db: InMemoryDatabase | None = None) -> None:
        self.db = db or InMemoryDatabase()

    def __call__(self) -> InMemoryUnitOfWork:
        return InMemoryUnitOfWork(self.db)
