"""In-memory stores: the unit of work for unit tests and the property-based test.

They keep the same contract as the SQL ones: writes become visible only on ``commit()``, a save
with a stale version writes nothing, and uniqueness violations raise ``Conflict``.

One unit of work at a time: each works on a copy of the database and its commit replaces the
whole of it, so two interleaved units of work would each claim the same timers or outbox rows
(the SQL stores lock or serialise them). Tests run them one after the other.
"""

from __future__ import annotations

import builtins
import copy
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from datetime import datetime
from types import TracebackType
from typing import Self

from workflow.errors import Conflict, case_moved
from workflow.memory_queue import (
    comes_after,
    ever_disputed,
    matches,
    merchant_figures,
    order_key,
    position,
)
from workflow.model import (
    Case,
    DeadLetter,
    DeadLetterStatus,
    OutboxEntry,
    OutboxMessage,
    Timer,
    TimerStatus,
    TransitionRecord,
    cases_by_reference,
)
from workflow.orders import Order
from workflow.ports import (
    CaseRepository,
    EventStore,
    OrderStore,
    Outbox,
    TimerStore,
    TransitionLog,
)
from workflow.queries import CaseQuery, MerchantFigures, Period, QueueRow, waiting_for

_LIVE = (TimerStatus.PENDING, TimerStatus.CLAIMED)


@dataclass
class _Transaction:
    """What one transaction knows of itself, shared by its stores."""

    #: An event was recorded or a timer marked fired: see ``workflow.ports.UnitOfWork``.
    once_by_record: bool = False
    #: The (case id, idempotency key) pairs this transaction registered.
    registered: set[tuple[int, str]] = field(default_factory=set)


@dataclass
class InMemoryDatabase:
    cases: dict[int, Case] = field(default_factory=dict)
    log: dict[int, list[TransitionRecord]] = field(default_factory=dict)
    timers: dict[int, Timer] = field(default_factory=dict)
    #: In id order (ids are assigned in ``add`` order).
    outbox: list[OutboxEntry] = field(default_factory=list)
    #: ``Outbox.retry`` records: (entry id, by, at, reason, attempts, parked_at).
    outbox_retries: list[tuple[int, str, datetime, str, int, datetime]] = field(
        default_factory=list
    )
    orders: dict[str, Order] = field(default_factory=dict)
    #: (source, event_id) -> (case id, received at) of the inbound events processed.
    inbound_events: dict[tuple[str, str], tuple[int | None, datetime]] = field(default_factory=dict)
    dead_letters: dict[int, DeadLetter] = field(default_factory=dict)
    #: (case id, idempotency key) of the calls made (``TransitionLog.append``).
    idempotency_keys: set[tuple[int, str]] = field(default_factory=set)
    next_case_id: int = 1
    next_timer_id: int = 1
    next_outbox_id: int = 1
    next_dead_letter_id: int = 1


class InMemoryCaseRepository:
    def __init__(self, db: InMemoryDatabase) -> None:
        self._db = db

    def get(self, case_id: int) -> Case | None:
        case = self._db.cases.get(case_id)
        return copy.deepcopy(case) if case else None

    def get_many(self, case_ids: Sequence[int]) -> dict[int, Case]:
        return {
            case_id: copy.deepcopy(self._db.cases[case_id])
            for case_id in case_ids
            if case_id in self._db.cases
        }

    def add(self, case: Case) -> int:
        case.id = self._db.next_case_id
        self._db.next_case_id += 1
        # Refused as the SQL store refuses (a unique index each), with the same words.
        if case.submission_key is not None:
            for earlier in self._db.cases.values():
                if earlier.submission_key == case.submission_key:
                    raise Conflict(
                        f"submission {case.submission_key} already created case {earlier.id}"
                    )
        self._db.cases[case.id] = copy.deepcopy(case)
        return case.id

    def save(self, case: Case, expected_version: int) -> None:
        assert case.id is not None
        stored = self._db.cases.get(case.id)
        if stored is None or stored.version != expected_version:
            raise case_moved(case.id)
        self._db.cases[case.id] = copy.deepcopy(case)

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

    def search(self, query: CaseQuery, now: datetime) -> builtins.list[QueueRow]:
        live = {t.case_id: t for t in self._db.timers.values() if t.status in _LIVE}
        found = [
            (case, live.get(case_id))
            for case_id, case in self._db.cases.items()
            if matches(query, case, live.get(case_id), self._ever_disputed(case_id), now)
        ]
        start = query.start()
        if start is not None:
            found = [(c, t) for c, t in found if comes_after(position(query, c, t), start)]
        found.sort(key=lambda row: order_key(query, *row))
        return [
            QueueRow(
                copy.deepcopy(case), replace(timer) if timer else None, waiting_for(case, timer)
            )
            for case, timer in found[: query.limit]
        ]

    def _ever_disputed(self, case_id: int) -> bool:
        return ever_disputed(self._db.log, case_id)

    def merchant_figures(
        self, period: Period, merchant_id: str | None = None
    ) -> builtins.list[MerchantFigures]:
        return merchant_figures(
            self._db.cases.values(), self._db.timers.values(), self._db.log, period, merchant_id
        )

    def by_submission_key(self, key: str) -> Case | None:
        for case in self._db.cases.values():
            if case.submission_key == key:
                return copy.deepcopy(case)
        return None

    def by_reference(
        self, order_id: str | None = None, tracking_no: str | None = None
    ) -> builtins.list[Case]:
        """As the SQL one: by ``tracking_no`` (any state; of ``order_id`` too when given), or
        the open cases of ``order_id``; newest first."""
        found = cases_by_reference(self._db.cases.values(), order_id, tracking_no)
        return [copy.deepcopy(case) for case in found]

    def of_orders(self, order_ids: Sequence[str]) -> dict[str, builtins.list[Case]]:
        wanted = set(order_ids)
        found: dict[str, builtins.list[Case]] = {}
        for case in self._db.cases.values():
            if case.order_id in wanted:
                found.setdefault(case.order_id, []).append(copy.deepcopy(case))
        return found


class InMemoryOrderStore:
    def __init__(self, db: InMemoryDatabase) -> None:
        self._db = db

    def get(self, order_id: str) -> Order | None:
        # Orders are frozen: no copy needed.
        return self._db.orders.get(order_id)

    def lock(self, order_id: str) -> Order | None:
        """One unit of work at a time here (see the module's note): reading is enough."""
        return self._db.orders.get(order_id)

    def put(self, order: Order, at: datetime) -> None:
        self._db.orders[order.order_id] = order


class InMemoryTransitionLog:
    def __init__(self, db: InMemoryDatabase, transaction: _Transaction) -> None:
        self._db = db
        self._transaction = transaction

    def append(self, records: Sequence[TransitionRecord]) -> None:
        # As the SQL log: a key is registered once per transaction (a call appending its
        # records in several batches is one call), unless it only labels the rows.
        slots: set[tuple[int, str]] = set()
        if not self._transaction.once_by_record:
            slots = {(r.case_id, r.idempotency_key) for r in records if r.idempotency_key}
            slots -= self._transaction.registered
        # A key is one call's: on any case, as the SQL log's unique index on the key alone.
        taken = {key for _, key in self._db.idempotency_keys}
        used = sorted(key for _, key in slots if key in taken)
        if used:
            raise Conflict(f"idempotency key {', '.join(used)} was already used")
        if any(e.seq == r.seq for r in records for e in self._db.log.get(r.case_id, ())):
            entries = ", ".join(f"{r.case_id}#{r.seq}" for r in records)
            raise Conflict(f"the log already has entry {entries}")
        self._db.idempotency_keys |= slots
        self._transaction.registered |= slots
        for record in records:
            self._db.log.setdefault(record.case_id, []).append(record)

    def by_key(self, case_id: int, key: str) -> list[TransitionRecord]:
        return [e for e in self.for_case(case_id) if e.idempotency_key == key]

    def for_case(self, case_id: int) -> list[TransitionRecord]:
        return sorted(self._db.log.get(case_id, []), key=lambda e: e.seq)


class InMemoryTimerStore:
    def __init__(self, db: InMemoryDatabase, transaction: _Transaction) -> None:
        self._db = db
        self._transaction = transaction

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

    def cancel_stale(self, timer: Timer, at: datetime) -> bool:
        return self._finish(timer, at, fired=False)

    def mark_fired(self, timer: Timer, fired_at: datetime) -> None:
        self._transaction.once_by_record = True
        self._finish(timer, fired_at, fired=True)

    def _finish(self, timer: Timer, fired_at: datetime, fired: bool) -> bool:
        assert timer.id is not None
        stored = self._db.timers[timer.id]
        if stored.status not in _LIVE or stored.version != timer.version:
            return False
        stored.status = TimerStatus.FIRED if fired else TimerStatus.CANCELLED
        stored.fired_at = fired_at
        return True

    def claim_due(
        self, as_of: datetime, limit: int, claimer: str, reclaim_before: datetime
    ) -> list[Timer]:
        claimable = [
            t
            for t in self._db.timers.values()
            if (t.status is TimerStatus.PENDING and t.due_at <= as_of)
            or (
                t.status is TimerStatus.CLAIMED
                and t.claimed_at is not None
                and t.claimed_at < reclaim_before
            )
        ]
        claimable.sort(key=lambda t: (t.due_at, t.id or 0))
        claimed = []
        for timer in claimable[:limit]:
            timer.status = TimerStatus.CLAIMED
            timer.claimed_at, timer.claimed_by = as_of, claimer
            claimed.append(replace(timer))
        return claimed

    def lateness(self, since: datetime) -> list[int]:
        fired = [
            t
            for t in self._db.timers.values()
            if t.status is TimerStatus.FIRED and t.fired_at is not None and t.fired_at >= since
        ]
        fired.sort(key=lambda t: (t.fired_at, t.id or 0))
        return [
            round((t.fired_at - t.due_at).total_seconds() * 1000)
            for t in fired
            if t.fired_at is not None
        ]


def _pending(entry: OutboxEntry) -> bool:
    return entry.completed_at is None and entry.parked_at is None


def _parked(entry: OutboxEntry) -> bool:
    return entry.completed_at is None and entry.parked_at is not None


class InMemoryOutbox:
    def __init__(self, db: InMemoryDatabase) -> None:
        self._db = db

    def add(self, messages: Sequence[OutboxMessage]) -> None:
        for m in messages:
            entry_id = self._db.next_outbox_id
            self._db.next_outbox_id += 1
            self._db.outbox.append(
                OutboxEntry(entry_id, m.topic, m.case_id, copy.deepcopy(m.payload), m.created_at)
            )

    def unpublished(
        self,
        limit: int,
        created_before: datetime | None = None,
        redeliver_before: datetime | None = None,
    ) -> list[OutboxEntry]:
        waiting = [
            entry
            for entry in self._db.outbox
            if entry.completed_at is None
            and entry.parked_at is None
            and (
                entry.published_at is None
                or (redeliver_before is not None and entry.published_at < redeliver_before)
            )
            and (created_before is None or entry.created_at < created_before)
        ]
        return copy.deepcopy(waiting[:limit])

    def mark_published(self, ids: Sequence[int], at: datetime) -> None:
        wanted = set(ids)
        self._db.outbox = [
            replace(entry, published_at=at, attempts=entry.attempts + 1)
            if entry.id in wanted
            else entry
            for entry in self._db.outbox
        ]

    def mark_completed(self, ids: Sequence[int], at: datetime) -> None:
        wanted = set(ids)
        self._db.outbox = [
            replace(entry, completed_at=at)
            if entry.id in wanted and entry.completed_at is None
            else entry
            for entry in self._db.outbox
        ]

    def postpone(self, entry_id: int, until: datetime) -> None:
        self._db.outbox = [
            replace(entry, published_at=until)
            if entry.id == entry_id and _pending(entry)
            else entry
            for entry in self._db.outbox
        ]

    def park(self, ids: Sequence[int], at: datetime) -> None:
        wanted = set(ids)
        self._db.outbox = [
            replace(entry, parked_at=at) if entry.id in wanted and _pending(entry) else entry
            for entry in self._db.outbox
        ]

    def parked(self, limit: int, after_id: int = 0) -> list[OutboxEntry]:
        found = [entry for entry in self._db.outbox if _parked(entry) and entry.id > after_id]
        return copy.deepcopy(found[:limit])

    def retry(self, entry_id: int, at: datetime, by: str, reason: str) -> OutboxEntry | None:
        for index, entry in enumerate(self._db.outbox):
            if entry.id == entry_id and _parked(entry) and entry.parked_at is not None:
                record = (entry.id, by, at, reason, entry.attempts, entry.parked_at)
                self._db.outbox_retries.append(record)
                fresh = replace(entry, parked_at=None, published_at=None, attempts=0)
                self._db.outbox[index] = fresh
                return copy.deepcopy(entry)
        return None

    def backlog(self) -> int:
        return sum(1 for entry in self._db.outbox if _pending(entry))

    def oldest_pending_age(self, now: datetime) -> float | None:
        pending = [entry.created_at for entry in self._db.outbox if _pending(entry)]
        if not pending:
            return None
        return max(0.0, (now - min(pending)).total_seconds())


class InMemoryEventStore:
    def __init__(self, db: InMemoryDatabase, transaction: _Transaction) -> None:
        self._db = db
        self._transaction = transaction

    def record(self, source: str, event_id: str, case_id: int | None, at: datetime) -> bool:
        if case_id is not None:
            self._transaction.once_by_record = True
        if (source, event_id) in self._db.inbound_events:
            return False
        self._db.inbound_events[(source, event_id)] = (case_id, at)
        return True

    def recorded(self, ids: Sequence[tuple[str, str]]) -> set[tuple[str, str]]:
        return {key for key in ids if key in self._db.inbound_events}

    def known(self, ids: Sequence[tuple[str, str]]) -> set[tuple[str, str]]:
        lettered = {(letter.source, letter.event_id) for letter in self._db.dead_letters.values()}
        return {key for key in ids if key in self._db.inbound_events or key in lettered}

    def dead_letter(self, letter: DeadLetter) -> int:
        """As the SQL one: a known (source, event_id) counts one more attempt and takes the new
        reason, code and envelope; its status and ``received_at`` stay."""
        if letter.event_id is not None:
            for stored in self._db.dead_letters.values():
                if (stored.source, stored.event_id) == (letter.source, letter.event_id):
                    stored.attempts += 1
                    stored.reason, stored.code = letter.reason, letter.code
                    stored.envelope = copy.deepcopy(letter.envelope)
                    assert stored.id is not None
                    letter.id = stored.id
                    return stored.id
        letter_id = self._db.next_dead_letter_id
        self._db.next_dead_letter_id += 1
        letter.id = letter_id
        self._db.dead_letters[letter_id] = copy.deepcopy(letter)
        return letter_id

    def dead_letters(
        self,
        status: DeadLetterStatus | None = DeadLetterStatus.OPEN,
        after_id: int | None = None,
        limit: int = 50,
    ) -> list[DeadLetter]:
        found = [
            copy.deepcopy(self._db.dead_letters[letter_id])
            for letter_id in sorted(self._db.dead_letters)
            if letter_id > (after_id or 0)
            and (status is None or self._db.dead_letters[letter_id].status is status)
        ]
        return found[:limit]

    def get_dead_letter(self, letter_id: int) -> DeadLetter | None:
        letter = self._db.dead_letters.get(letter_id)
        return copy.deepcopy(letter) if letter else None

    def resolve_dead_letter(
        self,
        letter_id: int,
        status: DeadLetterStatus,
        at: datetime,
        by: str | None = None,
        reason: str | None = None,
    ) -> None:
        letter = self._db.dead_letters.get(letter_id)
        if letter is None:
            raise KeyError(f"no dead letter {letter_id}")
        reopened = status is DeadLetterStatus.OPEN
        letter.status = status
        letter.resolved_at = None if reopened else at
        letter.resolved_by, letter.resolution = (None, None) if reopened else (by, reason)


class InMemoryUnitOfWork:
    """Works on a copy of the database; ``commit()`` swaps the copy in."""

    # Typed as the ports: protocol attributes are mutable, so mypy matches them invariantly.
    cases: CaseRepository
    orders: OrderStore
    log: TransitionLog
    timers: TimerStore
    outbox: Outbox
    events: EventStore

    def __init__(self, db: InMemoryDatabase) -> None:
        self._committed = db
        self._working = db
        self._transaction = _Transaction()

    def __enter__(self) -> Self:
        self._working = copy.deepcopy(self._committed)
        self._transaction = _Transaction()
        self._bind_stores()
        return self

    def _bind_stores(self) -> None:
        self.cases = InMemoryCaseRepository(self._working)
        self.orders = InMemoryOrderStore(self._working)
        self.log = InMemoryTransitionLog(self._working, self._transaction)
        self.timers = InMemoryTimerStore(self._working, self._transaction)
        self.outbox = InMemoryOutbox(self._working)
        self.events = InMemoryEventStore(self._working, self._transaction)

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
        self._transaction = _Transaction()
        self._bind_stores()

    def rollback(self) -> None:
        self._working = copy.deepcopy(self._committed)
        self._transaction = _Transaction()
        self._bind_stores()

    @contextmanager
    def savepoint(self) -> Iterator[None]:
        before = copy.deepcopy(self._working)
        registered = set(self._transaction.registered)
        try:
            yield
        except BaseException:
            self._working = before
            self._transaction.registered = registered
            self._bind_stores()
            raise


class InMemoryUnitOfWorkFactory:
    def __init__(self, db: InMemoryDatabase | None = None) -> None:
        self.db = db or InMemoryDatabase()

    def __call__(self) -> InMemoryUnitOfWork:
        return InMemoryUnitOfWork(self.db)
