"""What the service layer needs from storage: a unit of work and the stores inside it.

``persistence/`` implements these with SQL; tests use the in-memory ones in ``workflow.memory``.
A unit of work is one transaction: nothing it wrote is visible to others until ``commit()``, and
leaving the ``with`` block without a commit rolls everything back.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from types import TracebackType
from typing import Protocol, Self

from workflow.model import Case, OutboxMessage, Timer, TransitionRecord
from workflow.states import CaseState, CaseType


@dataclass(frozen=True)
class CaseQuery:
    state: CaseState | None = None
    type: CaseType | None = None
    merchant_id: str | None = None
    buyer_id: str | None = None
    order_id: str | None = None
    #: Keyset paging: cases with an id greater than this.
    after_id: int | None = None
    limit: int = 50


class CaseRepository(Protocol):
    def get(self, case_id: int) -> Case | None: ...

    def add(self, case: Case) -> int:
        """Store a new case and return its id; claims its items (one open case per item)."""
        ...

    def save(self, case: Case, expected_version: int) -> bool:
        """Write the case only if its stored version is still ``expected_version``."""
        ...

    def list(self, query: CaseQuery) -> list[Case]: ...

    def open_cases_for_items(self, order_id: str, skus: Sequence[str]) -> dict[str, int]:
        """Which of these skus of the order already have an open case, and which."""
        ...

    def release_items(self, case_id: int) -> None:
        """The case ended: its items may be applied for again."""
        ...

    def committed_refunds(self, order_id: str, exclude_case_id: int | None = None) -> int:
        """Fen refunded or claimed by the order's other cases that may still refund."""
        ...

    def lock_order(self, order_id: str) -> None:
        """Serialise submissions for one order until the transaction ends."""
        ...

    def by_submission_key(self, key: str) -> Case | None: ...


class TransitionLog(Protocol):
    def append(self, records: Sequence[TransitionRecord]) -> None: ...

    def by_key(self, case_id: int, key: str) -> list[TransitionRecord]:
        """The records a trigger with this idempotency key wrote (with its follow-ups)."""
        ...

    def for_case(self, case_id: int) -> list[TransitionRecord]: ...


class TimerStore(Protocol):
    def pending(self, case_id: int) -> Timer | None: ...

    def disarm(self, case_id: int) -> None: ...

    def arm(self, timer: Timer) -> None: ...

    def reschedule(self, timer_id: int, due_at: datetime, version: int) -> None: ...

    def due(self, as_of: datetime, limit: int) -> list[Timer]:
        """Pending timers due at ``as_of`` or earlier, oldest first."""
        ...

    def get(self, timer_id: int) -> Timer | None: ...

    def finish(self, timer_id: int, fired_at: datetime, fired: bool) -> None:
        """Mark the timer fired (or cancelled when it was stale) at ``fired_at``."""
        ...


class Outbox(Protocol):
    def add(self, messages: Sequence[OutboxMessage]) -> None: ...


class UnitOfWork(Protocol):
    cases: CaseRepository
    log: TransitionLog
    timers: TimerStore
    outbox: Outbox

    def __enter__(self) -> Self: ...

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None: ...

    def commit(self) -> None:
        """Make the writes durable; raises ``Conflict`` if a concurrent writer won."""
        ...

    def rollback(self) -> None: ...


class UnitOfWorkFactory(Protocol):
    def __call__(self) -> UnitOfWork: ...
