"""What the service layer needs from storage: a unit of work and the stores inside it.

``persistence/`` implements these with SQL; tests use the in-memory ones in ``workflow.memory``.
A unit of work is one transaction: nothing it wrote is visible to others until ``commit()``, and
leaving the ``with`` block without a commit rolls everything back. One method per intent: how a
write travels (at once, or with the next statement) is the store's choice, never the caller's.
"""

from __future__ import annotations

import builtins
from collections.abc import Sequence
from contextlib import AbstractContextManager
from datetime import datetime
from types import TracebackType
from typing import Protocol, Self

from workflow.model import (
    Case,
    DeadLetter,
    DeadLetterStatus,
    OutboxEntry,
    OutboxMessage,
    Timer,
    TransitionRecord,
)
from workflow.orders import Order
from workflow.queries import CaseQuery as CaseQuery  # re-exported: the port's argument
from workflow.queries import MerchantFigures, Period, QueueRow


class CaseRepository(Protocol):
    def get(self, case_id: int) -> Case | None: ...

    def get_many(self, case_ids: Sequence[int]) -> dict[int, Case]:
        """The cases of ``case_ids`` that exist, by id: one read for a batch."""
        ...

    def add(self, case: Case) -> int:
        """Store a new case and return its id (the caller checked the order's account under
        ``OrderStore.lock``)."""
        ...

    def save(self, case: Case, expected_version: int) -> None:
        """Write the case only if its stored version is still ``expected_version``, else raise
        ``Conflict``: here, or (the store may send the write with a later statement) at that
        later statement or the commit. A miss found later fails the unit of work: it cannot
        commit unless a savepoint taken before the write is rolled back to."""
        ...

    def list(self, query: CaseQuery) -> list[Case]:
        """The cases matching ``query``'s state, type, merchant, buyer and order, by id from
        ``after_id`` (its other fields are ``search``'s)."""
        ...

    def search(self, query: CaseQuery, now: datetime) -> builtins.list[QueueRow]:
        """Up to ``query.limit`` cases matching every filter of ``query``, in its order, after
        its cursor, each with its pending timer; ``now`` is what "overdue" is measured from."""
        ...

    def merchant_figures(
        self, period: Period, merchant_id: str | None = None
    ) -> builtins.list[MerchantFigures]:
        """The service figures of each merchant with cases submitted in ``period`` (only
        ``merchant_id``'s when given), by merchant id."""
        ...

    def by_submission_key(self, key: str) -> Case | None: ...

    def by_reference(
        self, order_id: str | None = None, tracking_no: str | None = None
    ) -> builtins.list[Case]:
        """Open cases of an order, or the case whose return or outbound parcel has this
        tracking number (``details['return_tracking_no']`` / ``['outbound_tracking_no']``,
        stored in indexed columns); newest first."""
        ...

    def of_orders(self, order_ids: Sequence[str]) -> dict[str, builtins.list[Case]]:
        """Every case (in any state) of each of these orders that has one, in no particular
        order, with its live timer as ``get`` reads it: one read for a batch's events that name
        their case by order and parcel (``model.cases_by_reference`` then picks and orders, as
        ``by_reference`` would)."""
        ...


class OrderStore(Protocol):
    """Orders of record (``workflow.orders``), written only by the order import."""

    def get(self, order_id: str) -> Order | None: ...

    def lock(self, order_id: str) -> Order | None:
        """Read the order and hold it until the transaction ends: submissions and refunds of
        one order are serialised (``SELECT ... FOR UPDATE`` on PostgreSQL; SQLite's writers
        already are). None, locking nothing, when there is no such order."""
        ...

    def put(self, order: Order, at: datetime) -> None:
        """At ``at``, insert the order, or write its delivery time when it is stored already
        (``orders.merge_import`` checked before that what was paid and ordered is unchanged).
        ``Conflict`` when a concurrent import inserted the same new order first."""
        ...


class TransitionLog(Protocol):
    def append(self, records: Sequence[TransitionRecord]) -> None:
        """Append ``records``. Their idempotency key is also registered (a second use of it is
        a ``Conflict``), except in a unit of work made once by its own record (see
        ``UnitOfWork``), where the key only labels the rows."""
        ...

    def by_key(self, case_id: int, key: str) -> list[TransitionRecord]:
        """The records a trigger with this idempotency key wrote (with its follow-ups)."""
        ...

    def for_case(self, case_id: int) -> list[TransitionRecord]: ...


class TimerStore(Protocol):
    def pending(self, case_id: int) -> Timer | None: ...

    def disarm(self, case_id: int) -> None: ...

    def arm(self, timer: Timer) -> None:
        """Store the new live timer and set ``timer.id``; in a unit of work made once by its
        own record (see ``UnitOfWork``) nobody reads the id, so the store may send the write
        with the next statement and leave ``timer.id`` None. A case with a live timer already
        is a ``Conflict``, raised here or at a later statement."""
        ...

    def reschedule(self, timer_id: int, due_at: datetime, version: int) -> None: ...

    def due(self, as_of: datetime, limit: int) -> list[Timer]:
        """Pending timers due at ``as_of`` or earlier, oldest first."""
        ...

    def get(self, timer_id: int) -> Timer | None: ...

    def cancel_stale(self, timer: Timer, at: datetime) -> bool:
        """Cancel a timer whose case moved on, at ``at``, with its lateness from
        ``timer.due_at``; only while it is still live at ``timer.version``. False, writing
        nothing, when it was finished or rescheduled since ``timer`` was read (a rescheduled
        deadline must not be cancelled on the strength of its old copy)."""
        ...

    def mark_fired(self, timer: Timer, fired_at: datetime) -> None:
        """Mark the timer fired at ``fired_at``, with its lateness, while it is still live at
        ``timer.version``. No answer, so the store may send it with the next statement: the
        caller then compare-and-sets the timer's case at ``timer.version``, and every change of
        a live timer but a claim also moves its case's version (a transition disarms it, an
        extension reschedules it, a firing fires it), so that compare-and-set fails exactly when
        this would have found nothing live. Makes the unit of work once by its own record."""
        ...

    def claim_due(
        self, as_of: datetime, limit: int, claimer: str, reclaim_before: datetime
    ) -> list[Timer]:
        """Claim up to ``limit`` timers due at ``as_of``: pending ones, and claimed ones whose
        claim is older than ``reclaim_before`` (their sweeper died). Marks them claimed by
        ``claimer`` at ``as_of``. Concurrent claimers get disjoint sets (``FOR UPDATE SKIP
        LOCKED`` on PostgreSQL; SQLite has one writer at a time)."""
        ...

    def lateness(self, since: datetime) -> list[int]:
        """Lateness in ms (fired_at - due_at) of the timers fired since ``since``."""
        ...


class Outbox(Protocol):
    """Rows to publish after commit. A row is *pending* from ``add`` until a consumer marks it
    completed; publishing it (``mark_published``) does not end that: a broker may lose what it
    was given (a Redis restart keeps nothing), so a row published long ago and still not
    completed is published again."""

    def add(self, messages: Sequence[OutboxMessage]) -> None: ...

    def unpublished(
        self,
        limit: int,
        created_before: datetime | None = None,
        redeliver_before: datetime | None = None,
    ) -> list[OutboxEntry]:
        """Pending rows to publish, oldest (lowest id) first: those never published and, when
        ``redeliver_before`` is given, those last published before it (lost by the broker, or
        their consumer died). Only rows created before ``created_before`` when it is given.
        Locked ``FOR UPDATE SKIP LOCKED`` on PostgreSQL so two relays do not publish the same
        rows at once."""
        ...

    def mark_published(self, ids: Sequence[int], at: datetime) -> None:
        """Set ``published_at`` to ``at`` and count one more attempt (once per id, however often
        it is named)."""
        ...

    def mark_completed(self, ids: Sequence[int], at: datetime) -> None:
        """A consumer finished with these rows: they are never published again. Idempotent: a
        row already completed keeps its first ``completed_at``; unknown ids are ignored."""
        ...

    def postpone(self, entry_id: int, until: datetime) -> None:
        """A consumer will retry the row at ``until``: count its redelivery window from then
        (a pending row only)."""
        ...

    def park(self, ids: Sequence[int], at: datetime) -> None:
        """The relay gives up on these pending rows: set ``parked_at``; no longer pending, so
        ``unpublished`` leaves them until ``retry``. A consumer may still complete them."""
        ...

    def parked(self, limit: int, after_id: int = 0) -> list[OutboxEntry]:
        """Parked rows no consumer completed, by id, those above ``after_id`` (keyset paging)."""
        ...

    def retry(self, entry_id: int, at: datetime, by: str, reason: str) -> OutboxEntry | None:
        """Make a parked row fresh (never published, no attempts) and record who retried it,
        when, why, and its attempts and parking time; the row as it was, or None when it is not
        parked (unknown, completed, or retried already). Locks the row on PostgreSQL."""
        ...

    def backlog(self) -> int:
        """How many rows are pending (not completed, not parked): waiting to be published or in
        flight."""
        ...

    def oldest_pending_age(self, now: datetime) -> float | None:
        """Seconds from the ``created_at`` of the oldest pending (not parked) row to ``now``
        (never below zero); None when nothing is pending. For monitoring."""
        ...


class EventStore(Protocol):
    """Inbound events: the processed ids (dedupe) and the dead letters."""

    def record(self, source: str, event_id: str, case_id: int | None, at: datetime) -> bool:
        """Remember the event in this transaction; False if (source, event_id) was seen. For a
        case, makes the unit of work once by its own record (see ``UnitOfWork``).

        The store may save round trips: an event this transaction read as not recorded
        (``recorded``) is a checked write that answers True, and raises ``Conflict`` (here, at
        a later statement, at the latest by the commit) when a concurrent delivery recorded it
        meanwhile; and a case the transaction holds no current copy of (not read yet, or
        written since) may be read with the record, for the ``CaseRepository.get`` of it that
        follows."""
        ...

    def recorded(self, ids: Sequence[tuple[str, str]]) -> set[tuple[str, str]]:
        """Which of these (source, event_id) are recorded (committed, or in this transaction)."""
        ...

    def known(self, ids: Sequence[tuple[str, str]]) -> set[tuple[str, str]]:
        """Which of these (source, event_id) were processed: recorded, or kept as a dead
        letter."""
        ...

    def dead_letter(self, letter: DeadLetter) -> int:
        """Store (or, for a known (source, event_id), update attempts and reason) and return
        the id."""
        ...

    def dead_letters(
        self,
        status: DeadLetterStatus | None = DeadLetterStatus.OPEN,
        after_id: int | None = None,
        limit: int = 50,
    ) -> list[DeadLetter]: ...

    def get_dead_letter(self, letter_id: int) -> DeadLetter | None: ...

    def resolve_dead_letter(
        self,
        letter_id: int,
        status: DeadLetterStatus,
        at: datetime,
        by: str | None = None,
        reason: str | None = None,
    ) -> None:
        """Set the status, with who resolved it and why; reopened (``OPEN``) clears them."""
        ...


class UnitOfWork(Protocol):
    """One transaction. A unit of work that recorded an inbound event for a case
    (``EventStore.record``) or marked a timer fired (``TimerStore.mark_fired``) is *made once
    by its own record*: that row is what keeps a redelivery from applying twice, so its log
    rows' idempotency keys only label them and nobody reads its new timers' ids."""

    cases: CaseRepository
    orders: OrderStore
    log: TransitionLog
    timers: TimerStore
    outbox: Outbox
    events: EventStore

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

    def savepoint(self) -> AbstractContextManager[None]:
        """A nested transaction: an exception inside rolls back what the block wrote (and
        only that) and is re-raised; otherwise the writes stay part of the transaction.
        PostgreSQL aborts the whole transaction at a failed statement; rolling back to the
        savepoint is what keeps the rest usable, so one bad item of a batch costs only itself."""
        ...


class UnitOfWorkFactory(Protocol):
    def __call__(self) -> UnitOfWork: ...
