"""The SQL unit of work: ``workflow.ports.UnitOfWork`` on one connection and one transaction.

The stores run SQLAlchemy Core statements, not ORM sessions: a transition is about ten single-row
statements, and the ORM's identity map and change tracking would cost more than they do. The
fixed statements go through ``fastsql.Prepared`` (compiled once per dialect, run on the DBAPI
cursor); the few built per call (``list``, ``open_cases_for_items``) through ``Connection``.

Queue-like reads (``TimerStore.claim_due``, ``Outbox.unpublished``) lock what they take with
``FOR UPDATE SKIP LOCKED`` on PostgreSQL, so concurrent sweepers and relays get disjoint rows
without waiting for each other; on SQLite every transaction holds the one write lock from its
first statement (``BEGIN IMMEDIATE``), which serialises them instead.
"""

from __future__ import annotations

import builtins
import threading
import weakref
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import replace
from datetime import datetime
from enum import StrEnum
from types import TracebackType
from typing import Any, NoReturn, Self, TypeVar

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection, Dialect, Engine
from sqlalchemy.exc import DBAPIError, IntegrityError
from sqlalchemy.sql import ClauseElement

from persistence.fastsql import Checkout, Prepared, insert_returning_id
from persistence.tables import (
    cases,
    dead_letters,
    idempotency_keys,
    inbound_events,
    open_case_items,
    outbox,
    timers,
    transitions,
)
from workflow.errors import Conflict, PolicyRefusal, case_moved, recorded_meanwhile
from workflow.model import (
    Case,
    DeadLetter,
    DeadLetterStatus,
    Gift,
    Item,
    OutboxEntry,
    OutboxMessage,
    Payment,
    RefundRoute,
    Timer,
    TimerStatus,
    TransitionRecord,
)
from workflow.ports import (
    CaseQuery,
    CaseRepository,
    EventStore,
    Outbox,
    TimerStore,
    TransitionLog,
)
from workflow.states import TERMINAL_STATES, CaseState, CaseType

#: Ended cases that will not refund (a refunded case keeps counting: its money went out).
_NOT_REFUNDING: list[sa.ColumnElement[Any]] = [
    sa.literal_column(f"'{state.value}'")
    for state in (CaseState.CANCELLED, CaseState.CLOSED, CaseState.EXCHANGED, CaseState.REPAIRED)
]
#: Ended cases: ``by_reference(order_id=...)`` lists the others.
_TERMINAL: list[sa.ColumnElement[Any]] = [
    sa.literal_column(f"'{state.value}'") for state in sorted(TERMINAL_STATES)
]
#: Namespace of the per-order advisory locks (the two-key form keeps them apart from others).
_ORDER_LOCK_CLASS = 0x6F726472  # "ordr"

# PostgreSQL SQLSTATEs that mean "a concurrent transaction got in the way; retry".
_PG_RETRYABLE = frozenset({"40001", "40P01", "55P03"})
_PG_UNIQUE_VIOLATION = "23505"
_SQLITE_UNIQUE = frozenset({"SQLITE_CONSTRAINT_UNIQUE", "SQLITE_CONSTRAINT_PRIMARYKEY"})

# Literals, not bind parameters: the planners can only use the partial unique index on live
# timers when the query repeats its predicate verbatim.
_LIVE = timers.c.status.in_([sa.literal_column("'pending'"), sa.literal_column("'claimed'")])


def _all_but(table: sa.Table, *excluded: str) -> list[str]:
    return [column.key for column in table.columns if column.key not in excluded]


_CASE_INSERT_COLUMNS = _all_but(cases, "id")
#: What transitions change. The rest is the application, fixed at submission: not writing it
#: keeps the database from rewriting the indexes on those columns at every transition.
_CASE_MUTABLE_COLUMNS = (
    "state",
    "version",
    "description",
    "requested_amount",
    "refund_amount",
    "gift_deduction",
    "refund_route",
    "refund_attempts",
    "refund_key",
    "details",
    "updated_at",
    "return_tracking_no",
    "outbound_tracking_no",
)
_CASE_KEYS = tuple(column.key for column in cases.columns)
_TRANSITION_KEYS = tuple(column.key for column in transitions.columns)
_TIMER_KEYS = tuple(column.key for column in timers.columns)
_OUTBOX_KEYS = tuple(column.key for column in outbox.columns)
_DEAD_LETTER_KEYS = tuple(column.key for column in dead_letters.columns)

_SELECT_CASE_BY_KEY = sa.select(cases).where(cases.c.submission_key == sa.bindparam("key"))
# WHERE parameters must not share a name with a column the statement sets.
_UPDATE_CASE = sa.update(cases).where(
    cases.c.id == sa.bindparam("where_id"), cases.c.version == sa.bindparam("where_version")
)
_DELETE_CLAIMS = sa.delete(open_case_items).where(
    open_case_items.c.case_id == sa.bindparam("case_id")
)
_SUM_REFUNDS = sa.select(sa.func.coalesce(sa.func.sum(cases.c.refund_amount), 0)).where(
    cases.c.order_id == sa.bindparam("order_id"),
    cases.c.state.not_in(_NOT_REFUNDING),
    # -1 never matches: one statement serves with and without an excluded case.
    cases.c.id != sa.bindparam("exclude_id"),
)
_SELECT_OPEN_CASES_OF_ORDER = (
    sa.select(cases)
    .where(cases.c.order_id == sa.bindparam("order_id"), cases.c.state.not_in(_TERMINAL))
    .order_by(cases.c.id.desc())
)
# Two indexed columns: SQLite answers the OR with both indexes (MULTI-INDEX OR), PostgreSQL
# with a BitmapOr.
_SELECT_CASES_BY_TRACKING_NO = (
    sa.select(cases)
    .where(
        sa.or_(
            cases.c.return_tracking_no == sa.bindparam("tracking_no"),
            cases.c.outbound_tracking_no == sa.bindparam("tracking_no"),
        )
    )
    .order_by(cases.c.id.desc())
)
_SELECT_CASES_BY_TRACKING_NO_OF_ORDER = _SELECT_CASES_BY_TRACKING_NO.where(
    cases.c.order_id == sa.bindparam("order_id")
)
_LOCK_ORDER = sa.text(f"SELECT pg_advisory_xact_lock({_ORDER_LOCK_CLASS}, hashtext(:order_id))")

#: ``CaseRepository.list`` filters, by parameter name.
_CASE_LIST_FILTERS: dict[str, sa.ColumnElement[bool]] = {
    "state": cases.c.state == sa.bindparam("state"),
    "type": cases.c.type == sa.bindparam("type"),
    "merchant_id": cases.c.merchant_id == sa.bindparam("merchant_id"),
    "buyer_id": cases.c.buyer_id == sa.bindparam("buyer_id"),
    "order_id": cases.c.order_id == sa.bindparam("order_id"),
    "after_id": cases.c.id > sa.bindparam("after_id"),
}

_SELECT_LOG = (
    sa.select(transitions)
    .where(transitions.c.case_id == sa.bindparam("case_id"))
    .order_by(transitions.c.seq)
)
_SELECT_LOG_BY_KEY = _SELECT_LOG.where(transitions.c.idempotency_key == sa.bindparam("key"))

# At most one row, by the partial unique index.
_SELECT_LIVE_TIMER = sa.select(timers).where(timers.c.case_id == sa.bindparam("case_id"), _LIVE)
# A case with its live timer (if any) in one read: a transition needs both, so reading the timer
# with the case saves a round trip per transition (``SqlTimerStore.pending`` answers from it).
_LIVE_TIMER_OF_CASE = sa.and_(timers.c.case_id == cases.c.id, _LIVE)
_CASES_AND_TIMERS = sa.select(cases, timers).select_from(
    cases.outerjoin(timers, _LIVE_TIMER_OF_CASE)
)
_SELECT_CASE_AND_TIMER = _CASES_AND_TIMERS.where(cases.c.id == sa.bindparam("case_id"))
_CASE_WIDTH = len(cases.columns)
_DISARM = (
    sa.update(timers)
    .where(timers.c.case_id == sa.bindparam("where_case_id"), _LIVE)
    .values(status=TimerStatus.CANCELLED.value)
)
_UPDATE_TIMER = sa.update(timers).where(timers.c.id == sa.bindparam("where_id"))
# Finishing checks the timer is still live at the version it was read with, in the UPDATE itself.
_FINISH_LIVE = sa.update(timers).where(
    timers.c.id == sa.bindparam("where_id"),
    timers.c.version == sa.bindparam("where_version"),
    _LIVE,
)
_SELECT_DUE = (
    sa.select(timers)
    .where(
        timers.c.status == TimerStatus.PENDING.value,
        timers.c.due_at <= sa.bindparam("as_of"),
    )
    .order_by(timers.c.due_at, timers.c.id)
    .limit(sa.bindparam("limit"))
)
_SELECT_TIMER = sa.select(timers).where(timers.c.id == sa.bindparam("timer_id"))
_PENDING: sa.ColumnElement[Any] = sa.literal_column(f"'{TimerStatus.PENDING.value}'")
_CLAIMED: sa.ColumnElement[Any] = sa.literal_column(f"'{TimerStatus.CLAIMED.value}'")


# One statement takes the batch. Each branch is an ordered range scan of ix_timers_status_due_at_id
# that stops after ``limit`` rows (and on PostgreSQL locks them, skipping rows a concurrent
# claimer holds): due pending timers, and claims left by a dead sweeper. A single WHERE with OR
# cannot be read in index order, so the planner fetched and sorted every claimable row, i.e. the
# whole backlog on every batch when 100,000 fall due at once (bench/timers_scale.py). SQLite
# renders no FOR UPDATE; its single writer already makes the claim exclusive. Pending -> claimed
# keeps the row in the partial unique index of live timers, so the claim cannot conflict there.
def _claimable(*where: sa.ColumnElement[bool]) -> sa.Subquery:
    return (
        sa.select(timers.c.id, timers.c.due_at)
        .where(*where)
        .order_by(timers.c.due_at, timers.c.id)
        .limit(sa.bindparam("limit"))
        .with_for_update(skip_locked=True)
        .subquery()
    )


_CLAIMABLE_DUE = _claimable(timers.c.status == _PENDING, timers.c.due_at <= sa.bindparam("as_of"))
_CLAIMABLE_ABANDONED = _claimable(
    timers.c.status == _CLAIMED, timers.c.claimed_at < sa.bindparam("reclaim_before")
)
_CLAIMABLE = sa.union_all(
    sa.select(_CLAIMABLE_DUE.c.id, _CLAIMABLE_DUE.c.due_at),
    sa.select(_CLAIMABLE_ABANDONED.c.id, _CLAIMABLE_ABANDONED.c.due_at),
).subquery()
_CLAIMABLE_IDS = (
    sa.select(_CLAIMABLE.c.id)
    .order_by(_CLAIMABLE.c.due_at, _CLAIMABLE.c.id)
    .limit(sa.bindparam("limit"))
)
_CLAIM_DUE = (
    sa.update(timers)
    .where(timers.c.id.in_(_CLAIMABLE_IDS.scalar_subquery()))
    .values(
        status=_CLAIMED,
        claimed_at=sa.bindparam("claim_at", type_=timers.c.claimed_at.type),
        claimed_by=sa.bindparam("claimer", type_=timers.c.claimed_by.type),
    )
    .returning(*timers.columns)
)
_SELECT_LATENESS = (
    sa.select(timers.c.lateness_ms)
    .where(
        timers.c.fired_at >= sa.bindparam("since"),
        timers.c.status == sa.literal_column(f"'{TimerStatus.FIRED.value}'"),
    )
    .order_by(timers.c.fired_at, timers.c.id)
)

# The predicate of the partial index ``ix_outbox_pending_id``: the planners use that index only
# when the query repeats it.
_PENDING_OUTBOX = outbox.c.completed_at.is_(None)
_SELECT_UNPUBLISHED = (
    sa.select(outbox)
    .where(_PENDING_OUTBOX, outbox.c.published_at.is_(None))
    .order_by(outbox.c.id)
    .limit(sa.bindparam("limit"))
    .with_for_update(skip_locked=True)
)
_SELECT_UNPUBLISHED_BEFORE = _SELECT_UNPUBLISHED.where(
    outbox.c.created_at < sa.bindparam("created_before")
)
# The rows published before ``redeliver_before`` and still not completed: lost on the way.
# Its own statement, on its own index (``ix_outbox_in_flight_published_at``): in one OR with
# the unpublished rows, the read walked every row in flight (migration 0006).
_SELECT_UNDELIVERED = (
    sa.select(outbox)
    .where(
        _PENDING_OUTBOX,
        outbox.c.published_at.is_not(None),
        outbox.c.published_at < sa.bindparam("redeliver_before"),
    )
    .order_by(outbox.c.id)
    .limit(sa.bindparam("limit"))
    .with_for_update(skip_locked=True)
)
_SELECT_UNDELIVERED_BEFORE = _SELECT_UNDELIVERED.where(
    outbox.c.created_at < sa.bindparam("created_before")
)
_MARK_PUBLISHED = (
    sa.update(outbox)
    .where(outbox.c.id == sa.bindparam("where_id"))
    .values(
        published_at=sa.bindparam("at", type_=outbox.c.published_at.type),
        attempts=outbox.c.attempts + 1,
    )
)
# Only pending rows: a second completion keeps the first time.
_MARK_COMPLETED = (
    sa.update(outbox)
    .where(outbox.c.id == sa.bindparam("where_id"), _PENDING_OUTBOX)
    .values(completed_at=sa.bindparam("at", type_=outbox.c.completed_at.type))
)
# PostgreSQL: the same two for a list of ids in one statement. The relay marks a batch of up
# to 200 rows and a notice batch completes up to 100: one statement each instead of one per
# row (each row a Bind/Execute of its own in the pipeline, parsed and planned apart).
_ID_LIST = sa.bindparam("ids", type_=postgresql.ARRAY(outbox.c.id.type))
_MARK_PUBLISHED_ANY = (
    sa.update(outbox)
    .where(outbox.c.id == sa.any_(_ID_LIST))
    .values(
        published_at=sa.bindparam("at", type_=outbox.c.published_at.type),
        attempts=outbox.c.attempts + 1,
    )
)
_MARK_COMPLETED_ANY = (
    sa.update(outbox)
    .where(outbox.c.id == sa.any_(_ID_LIST), _PENDING_OUTBOX)
    .values(completed_at=sa.bindparam("at", type_=outbox.c.completed_at.type))
)
# A consumer waiting to retry moves its row's publish time to when the retry runs, so the
# relay's redelivery window starts from there instead of republishing a live retry chain.
_POSTPONE = (
    sa.update(outbox)
    .where(outbox.c.id == sa.bindparam("where_id"), _PENDING_OUTBOX)
    .values(published_at=sa.bindparam("until", type_=outbox.c.published_at.type))
)
_COUNT_PENDING = sa.select(sa.func.count()).select_from(outbox).where(_PENDING_OUTBOX)
_OLDEST_PENDING = sa.select(sa.func.min(outbox.c.created_at)).where(_PENDING_OUTBOX)

_SELECT_DEAD_LETTERS = (
    sa.select(dead_letters)
    # after_id 0 when not paging: ids start at 1 on both backends.
    .where(dead_letters.c.id > sa.bindparam("after_id"))
    .order_by(dead_letters.c.id)
    .limit(sa.bindparam("limit"))
)
_SELECT_DEAD_LETTERS_BY_STATUS = _SELECT_DEAD_LETTERS.where(
    dead_letters.c.status == sa.bindparam("status")
)
_SELECT_DEAD_LETTER = sa.select(dead_letters).where(dead_letters.c.id == sa.bindparam("letter_id"))
_RESOLVE_DEAD_LETTER = (
    sa.update(dead_letters)
    .where(dead_letters.c.id == sa.bindparam("where_id"))
    .values(
        status=sa.bindparam("status", type_=dead_letters.c.status.type),
        resolved_at=sa.bindparam("resolved_at", type_=dead_letters.c.resolved_at.type),
    )
)


def _upsert(table: sa.Table, dialect: Dialect) -> Any:
    """``INSERT ... ON CONFLICT`` of ``table``: both backends spell it the same way."""
    if dialect.name == "postgresql":
        return postgresql.insert(table)
    if dialect.name == "sqlite":
        return sqlite.insert(table)
    raise NotImplementedError(f"no INSERT ... ON CONFLICT for {dialect.name}")


def _record_event(dialect: Dialect) -> sa.Insert:
    # DO NOTHING, not an error: a redelivery must leave the transaction usable (PostgreSQL
    # aborts a transaction on a unique violation), and the rowcount tells which it was.
    statement: sa.Insert = _upsert(inbound_events, dialect).on_conflict_do_nothing(
        index_elements=[inbound_events.c.source, inbound_events.c.event_id]
    )
    return statement


#: The (source, event_id) pairs one ``select_known_events`` or ``select_recorded_events``
#: takes: one statement shape, the last pair repeated to fill it.
KNOWN_EVENTS_CHUNK = 100


def _event_pairs_in(*tables: sa.Table) -> sa.Select[Any] | sa.CompoundSelect[Any]:
    """The pairs ``source_i``, ``event_id_i`` (``KNOWN_EVENTS_CHUNK`` of them) found in any of
    ``tables``."""

    def found_in(table: sa.Table) -> sa.Select[Any]:
        pairs = [
            sa.tuple_(
                sa.bindparam(f"source_{i}", type_=table.c.source.type),
                sa.bindparam(f"event_id_{i}", type_=table.c.event_id.type),
            )
            for i in range(KNOWN_EVENTS_CHUNK)
        ]
        pair = sa.tuple_(table.c.source, table.c.event_id)
        return sa.select(table.c.source, table.c.event_id).where(pair.in_(pairs))

    if len(tables) == 1:
        return found_in(tables[0])
    return sa.union(*(found_in(table) for table in tables))


def _record_event_reading_case(dialect: Dialect) -> sa.Select[Any]:
    """PostgreSQL: ``_record_event`` and ``select_case_and_timer`` in one statement, one row
    always: (1 if recorded else 0, the case's columns or NULLs, its live timer's or NULLs).
    The INSERT runs whatever the SELECT finds (a data-modifying WITH always runs to the end)."""
    recorded = (
        _record_event(dialect)
        .values(
            source=sa.bindparam("source"),
            event_id=sa.bindparam("event_id"),
            case_id=sa.bindparam("case_id"),
            received_at=sa.bindparam("received_at"),
        )
        .returning(inbound_events.c.event_id)
        .cte("recorded")
    )
    counted = sa.select(sa.func.count().label("recorded")).select_from(recorded).subquery("r")
    read = counted.outerjoin(cases, cases.c.id == sa.bindparam("read_case_id")).outerjoin(
        timers, _LIVE_TIMER_OF_CASE
    )
    return sa.select(counted.c.recorded, cases, timers).select_from(read)


def _store_dead_letter(dialect: Dialect) -> sa.Insert:
    # NULLs are distinct in the unique constraint: letters without an event id always insert.
    insert = _upsert(dead_letters, dialect)
    statement: sa.Insert = insert.on_conflict_do_update(
        index_elements=[dead_letters.c.source, dead_letters.c.event_id],
        set_={
            "attempts": dead_letters.c.attempts + 1,
            "reason": insert.excluded.reason,
            "code": insert.excluded.code,
            "envelope": insert.excluded.envelope,
        },
    ).returning(dead_letters.c.id)
    return statement


class _Statements:
    """The fixed statements, compiled for one dialect."""

    def __init__(self, dialect: Dialect) -> None:
        def select(statement: sa.Select[Any]) -> Prepared:
            return Prepared(statement, dialect, returns=list(statement.selected_columns))

        def write(statement: ClauseElement, *column_keys: str) -> Prepared:
            return Prepared(statement, dialect, column_keys=column_keys)

        self.select_case_by_key = select(_SELECT_CASE_BY_KEY)
        self.select_open_cases_of_order = select(_SELECT_OPEN_CASES_OF_ORDER)
        self.select_cases_by_tracking_no = select(_SELECT_CASES_BY_TRACKING_NO)
        self.select_cases_by_tracking_no_of_order = select(_SELECT_CASES_BY_TRACKING_NO_OF_ORDER)
        self.insert_case = insert_returning_id(cases, dialect, _CASE_INSERT_COLUMNS)
        self.update_case = write(_UPDATE_CASE, *_CASE_MUTABLE_COLUMNS)
        self.insert_claim = write(sa.insert(open_case_items), "order_id", "sku", "case_id")
        self.delete_claims = write(_DELETE_CLAIMS)
        self.sum_refunds = select(_SUM_REFUNDS)
        self.lock_order = write(_LOCK_ORDER)
        self.insert_key = write(sa.insert(idempotency_keys), "case_id", "key", "first_seq")
        self.insert_transition = write(sa.insert(transitions), *_all_but(transitions, "id"))
        self.select_log = select(_SELECT_LOG)
        self.select_log_by_key = select(_SELECT_LOG_BY_KEY)
        self.insert_timer = insert_returning_id(timers, dialect, _all_but(timers, "id"))
        self.insert_timer_deferred = write(sa.insert(timers), *_all_but(timers, "id"))
        self.select_live_timer = select(_SELECT_LIVE_TIMER)
        self.select_case_and_timer = select(_SELECT_CASE_AND_TIMER)
        self.disarm = write(_DISARM)
        self.reschedule = write(_UPDATE_TIMER, "due_at", "version")
        self.finish_live = write(_FINISH_LIVE, "status", "fired_at", "lateness_ms")
        self.select_due = select(_SELECT_DUE)
        self.select_timer = select(_SELECT_TIMER)
        self.claim_due = Prepared(_CLAIM_DUE, dialect, returns=list(timers.columns))
        self.select_lateness = select(_SELECT_LATENESS)
        self.insert_outbox = write(
            sa.insert(outbox), "topic", "case_id", "payload", "created_at", "attempts"
        )
        self.select_unpublished = select(_SELECT_UNPUBLISHED)
        self.select_unpublished_before = select(_SELECT_UNPUBLISHED_BEFORE)
        self.select_undelivered = select(_SELECT_UNDELIVERED)
        self.select_undelivered_before = select(_SELECT_UNDELIVERED_BEFORE)
        self.mark_published = write(_MARK_PUBLISHED)
        self.mark_completed = write(_MARK_COMPLETED)
        postgres = dialect.name == "postgresql"
        self.mark_published_any = write(_MARK_PUBLISHED_ANY) if postgres else None
        self.mark_completed_any = write(_MARK_COMPLETED_ANY) if postgres else None
        self.postpone = write(_POSTPONE)
        self.count_pending = select(_COUNT_PENDING)
        self.oldest_pending = select(_OLDEST_PENDING)
        self.record_event = write(
            _record_event(dialect), "source", "event_id", "case_id", "received_at"
        )
        # PostgreSQL only: SQLite has no INSERT inside WITH.
        self.record_event_reading_case = (
            select(_record_event_reading_case(dialect)) if dialect.name == "postgresql" else None
        )
        pair = [inbound_events.c.source, inbound_events.c.event_id]
        # Processed: recorded, or kept as a dead letter (the resender's question).
        self.select_known_events = Prepared(
            _event_pairs_in(inbound_events, dead_letters), dialect, returns=pair
        )
        # Recorded (a batch's duplicates, read before its events apply).
        self.select_recorded_events = Prepared(
            _event_pairs_in(inbound_events), dialect, returns=pair
        )
        self.store_dead_letter = Prepared(
            _store_dead_letter(dialect),
            dialect,
            column_keys=_all_but(dead_letters, "id"),
            returns=[dead_letters.c.id],
        )
        self.select_dead_letters = select(_SELECT_DEAD_LETTERS)
        self.select_dead_letters_by_status = select(_SELECT_DEAD_LETTERS_BY_STATUS)
        self.select_dead_letter = select(_SELECT_DEAD_LETTER)
        self.resolve_dead_letter = write(_RESOLVE_DEAD_LETTER)
        self._dialect = dialect
        # Statements whose shape depends on the call, compiled once per shape. Two threads may
        # compile the same one at once; either result is the same statement.
        self._case_lists: dict[frozenset[str], Prepared] = {}
        self._open_claims: dict[int, Prepared] = {}
        self._cases_with_timers: dict[tuple[str, int], Prepared] = {}

    def case_list(self, filters: frozenset[str]) -> Prepared:
        """``CaseRepository.list`` with these of ``_CASE_LIST_FILTERS`` given, and a limit."""

        def build() -> sa.Select[Any]:
            statement = sa.select(cases)
            for name in _CASE_LIST_FILTERS:
                if name in filters:
                    statement = statement.where(_CASE_LIST_FILTERS[name])
            return statement.order_by(cases.c.id).limit(sa.bindparam("limit"))

        return self._compiled_once(self._case_lists, filters, build)

    def cases_with_timers(self, key: str, count: int) -> Prepared:
        """The case rows whose column ``key`` (``id``, ``order_id``) is one of ``count`` values
        (``<key>_0`` ...), with their live timers, as ``select_case_and_timer``: a batch's
        cases in one SELECT."""

        def build() -> sa.Select[Any]:
            column = cases.c[key]
            values = [sa.bindparam(f"{key}_{i}", type_=column.type) for i in range(count)]
            return _CASES_AND_TIMERS.where(column.in_(values))

        return self._compiled_once(self._cases_with_timers, (key, count), build)

    def open_claims(self, count: int) -> Prepared:
        """The claims of ``count`` SKUs (``sku_0`` ...) of an order: (sku, case_id) rows."""

        def build() -> sa.Select[Any]:
            skus = [
                sa.bindparam(f"sku_{i}", type_=open_case_items.c.sku.type) for i in range(count)
            ]
            return sa.select(open_case_items.c.sku, open_case_items.c.case_id).where(
                open_case_items.c.order_id == sa.bindparam("order_id"),
                open_case_items.c.sku.in_(skus),
            )

        return self._compiled_once(self._open_claims, count, build)

    def _compiled_once(
        self, cache: dict[K, Prepared], key: K, build: Callable[[], sa.Select[Any]]
    ) -> Prepared:
        """The statement ``build`` makes for ``key``, compiled on first use and kept."""
        prepared = cache.get(key)
        if prepared is None:
            statement = build()
            prepared = Prepared(statement, self._dialect, returns=list(statement.selected_columns))
            cache[key] = prepared
        return prepared


_compiled: weakref.WeakKeyDictionary[Dialect, _Statements] = weakref.WeakKeyDictionary()
_compiled_lock = threading.Lock()


def _statements_for(dialect: Dialect) -> _Statements:
    statements = _compiled.get(dialect)
    if statements is None:
        with _compiled_lock:
            statements = _compiled.get(dialect)
            if statements is None:
                statements = _compiled[dialect] = _Statements(dialect)
    return statements


class SqlUnitOfWork:
    """One ``with`` block is one connection and one transaction; leaving it uncommitted rolls
    back. After a ``Conflict`` or a database error the transaction may be unusable (PostgreSQL
    aborts it): roll back, or leave the block, before doing more.

    The stores run on a ``fastsql.Checkout`` (a pooled DBAPI connection); ``connection`` gives a
    SQLAlchemy ``Connection`` on the same transaction when Core is wanted.
    """

    def __init__(self, engine: Engine) -> None:
        self._engine = engine
        self._checkout: Checkout | None = None
        self._statements: _Statements | None = None
        self._log = SqlTransitionLog(self)
        self._cases = SqlCaseRepository(self)
        self._timers = SqlTimerStore(self)
        # Typed as the ports: protocol attributes are mutable, so mypy matches them invariantly.
        self.cases: CaseRepository = self._cases
        self.log: TransitionLog = self._log
        self.timers: TimerStore = self._timers
        self.outbox: Outbox = SqlOutbox(self)
        self.events: EventStore = SqlEventStore(self)

    @property
    def connection(self) -> Connection:
        return self._active().connection

    @property
    def statements(self) -> _Statements:
        if self._statements is None:
            raise RuntimeError("the unit of work is used outside its `with` block")
        return self._statements

    @property
    def dialect_name(self) -> str:
        return self._engine.dialect.name

    def __enter__(self) -> Self:
        if self._checkout is not None:
            raise RuntimeError("the unit of work is already in use")
        # The transaction begins with the first statement (on SQLite: takes the write lock).
        self._checkout = Checkout(self._engine)
        # Compiled after the first connect, which tells the dialect what the server supports.
        self._statements = _statements_for(self._engine.dialect)
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        checkout, self._checkout = self._checkout, None
        if checkout is None:
            return
        try:
            if checkout.in_transaction:
                checkout.rollback()
        finally:
            self._forget()
            checkout.close()

    def commit(self) -> None:
        checkout = self._active()
        try:
            checkout.commit()
        except Conflict:
            # A checked write missed (``Checkout.defer_checked``): nothing was committed.
            self._after_failed_commit()
            raise
        except IntegrityError as exc:
            self._after_failed_commit()
            raise Conflict(f"a concurrent writer won: {_reason(exc)}") from exc
        except DBAPIError as exc:
            if not _retryable(exc):
                raise
            self._after_failed_commit()
            raise Conflict(f"a concurrent writer won: {_reason(exc)}") from exc

    def rollback(self) -> None:
        self._active().rollback()
        self._forget()

    def _active(self) -> Checkout:
        if self._checkout is None:
            raise RuntimeError("the unit of work is used outside its `with` block")
        return self._checkout

    def _forget(self) -> None:
        self._log.forget_keys()
        self._cases.forget_loaded()
        self._timers.forget_read()

    @contextmanager
    def savepoint(self) -> Iterator[None]:
        """A savepoint per item of a batch: rolled back to, then the error re-raised, when the
        block fails; never released (``Checkout.savepoint(release=False)``: one round trip)."""
        checkout = self._active()
        keys = self._log.registered_keys()
        try:
            with checkout.savepoint(release=False):
                yield
        except BaseException:
            # The idempotency keys the block registered are gone with its rows, and the timers
            # read with cases may have been read after its writes.
            self._log.restore_keys(keys)
            self._timers.forget_read()
            raise

    def _after_failed_commit(self) -> None:
        self._forget()
        self._active().rollback()


class SqlUnitOfWorkFactory:
    """What the service layer is given: each call is a fresh unit of work on ``engine``."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def __call__(self) -> SqlUnitOfWork:
        return SqlUnitOfWork(self.engine)


K = TypeVar("K")
P = TypeVar("P")
R = TypeVar("R")


class _Store:
    def __init__(self, uow: SqlUnitOfWork) -> None:
        self._uow = uow

    def _run(self, run: Callable[[Checkout, P], R], params: P) -> R:
        """``run`` is a bound ``Prepared`` method; lost races come out as ``Conflict``."""
        try:
            return run(self._uow._active(), params)
        except DBAPIError as exc:
            if _retryable(exc):
                raise Conflict(f"a concurrent writer is in the way: {_reason(exc)}") from exc
            if _deferred_unique_violation(exc):
                # A deferred write (a log row, ...) lost a race and surfaced here, later than
                # at its own call, which would have said Conflict too.
                raise Conflict(f"a concurrent writer won: {_reason(exc)}") from exc
            raise

    def _run_checked(
        self, statement: Prepared, params: dict[str, Any], miss: Callable[[], Exception]
    ) -> None:
        """A checked deferred write of one row (``Prepared.defer_checked``)."""

        def write(checkout: Checkout, values: dict[str, Any]) -> None:
            statement.defer_checked(checkout, values, 1, miss)

        self._run(write, params)


class SqlCaseRepository(_Store):
    def __init__(self, uow: SqlUnitOfWork) -> None:
        super().__init__(uow)
        # The fixed columns of each case as loaded, so save() can refuse to drop a change to them.
        self._loaded: dict[int, tuple[Any, ...]] = {}

    def forget_loaded(self) -> None:
        self._loaded.clear()

    def _load(self, row: Sequence[Any]) -> Case:
        case = _case_from_row(row)
        assert case.id is not None
        self._loaded[case.id] = _fixed_fields(case)
        return case

    def get(self, case_id: int) -> Case | None:
        row = self._run(self._uow.statements.select_case_and_timer.first, {"case_id": case_id})
        return self._with_timer(row) if row is not None else None

    def get_many(self, case_ids: Sequence[int]) -> dict[int, Case]:
        """One SELECT ... WHERE id IN (...), prepared per number of ids (a batch has ≤ 100),
        with each case's live timer, as ``get``."""
        return {_id_of(case): case for case in self._with_timers_where("id", case_ids)}

    def of_orders(self, order_ids: Sequence[str]) -> dict[str, builtins.list[Case]]:
        found: dict[str, builtins.list[Case]] = {}
        for case in self._with_timers_where("order_id", order_ids):
            found.setdefault(case.order_id, []).append(case)
        return found

    def _with_timers_where(self, key: str, values: Sequence[Any]) -> builtins.list[Case]:
        """The cases whose ``key`` is one of ``values``, their live timers to the timer store."""
        distinct = list(dict.fromkeys(values))
        if not distinct:
            return []
        statement = self._uow.statements.cases_with_timers(key, len(distinct))
        params = {f"{key}_{i}": value for i, value in enumerate(distinct)}
        return [self._with_timer(row) for row in self._run(statement.rows, params)]

    def _with_timer(self, row: Sequence[Any]) -> Case:
        """The case of a ``select_case_and_timer`` row; its timer goes to the timer store."""
        case = self._load(row[:_CASE_WIDTH])
        timer = row[_CASE_WIDTH:]
        self._uow._timers.read_with_case(_id_of(case), _timer_from_row(timer) if timer[0] else None)
        return case

    def add(self, case: Case) -> int:
        sql = self._uow.statements
        values = _case_values(case)
        skus = list(dict.fromkeys(case.skus))
        # A savepoint keeps the transaction usable after a unique violation (PostgreSQL aborts
        # it otherwise), so the error can be explained with what the database holds.
        try:
            with self._uow._active().savepoint():
                case_id = self._run(sql.insert_case.insert, values)
                claims = [
                    {"order_id": case.order_id, "sku": sku, "case_id": case_id} for sku in skus
                ]
                if claims:
                    self._run(sql.insert_claim.execute_many, claims)
        except IntegrityError as exc:
            self._explain_refused_add(case, skus, exc)
        case.id = case_id
        self._loaded[case_id] = _fixed_fields(case)
        return case_id

    def _explain_refused_add(self, case: Case, skus: list[str], exc: IntegrityError) -> NoReturn:
        if case.submission_key is not None:
            earlier = self.by_submission_key(case.submission_key)
            if earlier is not None:
                raise Conflict(
                    f"submission {case.submission_key} already created case {earlier.id}"
                ) from exc
        taken = self.open_cases_for_items(case.order_id, skus)
        if taken:
            listed = "; ".join(
                f"{sku} of order {case.order_id} already has an open case {taken[sku]}"
                for sku in skus
                if sku in taken
            )
            raise PolicyRefusal("one_open_case_per_item", listed) from exc
        raise exc

    def save(self, case: Case, expected_version: int) -> bool:
        values = self._save_values(case, expected_version)
        return self._run(self._uow.statements.update_case.execute, values) == 1

    def save_checked(self, case: Case, expected_version: int) -> None:
        values = self._save_values(case, expected_version)
        self._run_checked(self._uow.statements.update_case, values, lambda: case_moved(case.id))

    def _save_values(self, case: Case, expected_version: int) -> dict[str, Any]:
        if case.id is None:
            raise ValueError("save() needs a stored case; use add() for a new one")
        loaded = self._loaded.get(case.id)
        if loaded is not None and loaded != _fixed_fields(case):
            changed = [
                name
                for name, was, now in zip(_FIXED_FIELDS, loaded, _fixed_fields(case), strict=True)
                if was != now
            ]
            raise ValueError(
                f"case {case.id}: {', '.join(changed)} cannot change after submission "
                "(save() writes only the fields transitions change)"
            )
        values = _case_mutable_values(case)
        values["where_id"] = case.id
        values["where_version"] = expected_version
        return values

    def list(self, query: CaseQuery) -> list[Case]:
        wanted = {
            "state": query.state.value if query.state else None,
            "type": query.type.value if query.type else None,
            "merchant_id": query.merchant_id,
            "buyer_id": query.buyer_id,
            "order_id": query.order_id,
            "after_id": query.after_id,
        }
        params = {name: value for name, value in wanted.items() if value is not None}
        statement = self._uow.statements.case_list(frozenset(params))
        params["limit"] = query.limit
        return [self._load(row) for row in self._run(statement.rows, params)]

    def open_cases_for_items(self, order_id: str, skus: Sequence[str]) -> dict[str, int]:
        if not skus:
            return {}
        statement = self._uow.statements.open_claims(len(skus))
        params = {"order_id": order_id, **{f"sku_{i}": sku for i, sku in enumerate(skus)}}
        return {sku: case_id for sku, case_id in self._run(statement.rows, params)}

    def release_items(self, case_id: int) -> None:
        self._run(self._uow.statements.delete_claims.defer_many, [{"case_id": case_id}])

    def committed_refunds(self, order_id: str, exclude_case_id: int | None = None) -> int:
        params = {
            "order_id": order_id,
            "exclude_id": -1 if exclude_case_id is None else exclude_case_id,
        }
        row = self._run(self._uow.statements.sum_refunds.first, params)
        return int(row[0]) if row is not None else 0

    def lock_order(self, order_id: str) -> None:
        # SQLite needs nothing: every transaction began with BEGIN IMMEDIATE, so writers are
        # already serialised for the whole database.
        if self._uow.dialect_name == "postgresql":
            self._run(self._uow.statements.lock_order.execute, {"order_id": order_id})

    def by_submission_key(self, key: str) -> Case | None:
        row = self._run(self._uow.statements.select_case_by_key.first, {"key": key})
        return self._load(row) if row is not None else None

    def by_reference(
        self, order_id: str | None = None, tracking_no: str | None = None
    ) -> builtins.list[Case]:
        """With ``tracking_no``: the cases (in any state) whose return or outbound parcel has it,
        of ``order_id`` too when given; with ``order_id`` alone: the order's open cases. Newest
        first."""
        sql = self._uow.statements
        if tracking_no is not None:
            if order_id is None:
                statement = sql.select_cases_by_tracking_no
                params = {"tracking_no": tracking_no}
            else:
                statement = sql.select_cases_by_tracking_no_of_order
                params = {"tracking_no": tracking_no, "order_id": order_id}
        elif order_id is not None:
            statement = sql.select_open_cases_of_order
            params = {"order_id": order_id}
        else:
            raise ValueError("by_reference() needs an order_id or a tracking_no")
        return [self._load(row) for row in self._run(statement.rows, params)]


class SqlTransitionLog(_Store):
    def __init__(self, uow: SqlUnitOfWork) -> None:
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

    def append(self, records: Sequence[TransitionRecord], register_key: bool = True) -> None:
        if not records:
            return
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
            [_record_values(record) for record in records],
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
            if _unique_violation(exc):
                raise Conflict(conflict()) from exc
            raise

    def by_key(self, case_id: int, key: str) -> list[TransitionRecord]:
        params = {"case_id": case_id, "key": key}
        return [
            _record_from_row(r)
            for r in self._run(self._uow.statements.select_log_by_key.rows, params)
        ]

    def for_case(self, case_id: int) -> list[TransitionRecord]:
        params = {"case_id": case_id}
        return [
            _record_from_row(r) for r in self._run(self._uow.statements.select_log.rows, params)
        ]


class SqlTimerStore(_Store):
    def __init__(self, uow: SqlUnitOfWork) -> None:
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
        return _timer_from_row(row) if row is not None else None

    def disarm(self, case_id: int) -> None:
        self._run_for(case_id, self._uow.statements.disarm.defer_many, [{"where_case_id": case_id}])

    def arm(self, timer: Timer, with_id: bool = True) -> None:
        sql = self._uow.statements
        try:
            values = _timer_values(timer)
            if with_id:
                timer.id = self._run_for(timer.case_id, sql.insert_timer.insert, values)
            else:
                # A lost race (a live timer already) surfaces at a later statement, where
                # ``_Store._run`` turns the deferred unique violation into a Conflict too.
                self._run_for(timer.case_id, sql.insert_timer_deferred.defer_many, [values])
        except IntegrityError as exc:
            if _unique_violation(exc):
                raise Conflict(f"case {timer.case_id} already has a live timer") from exc
            raise

    def reschedule(self, timer_id: int, due_at: datetime, version: int) -> None:
        params = {"where_id": timer_id, "due_at": due_at, "version": version}
        if self._run(self._uow.statements.reschedule.execute, params) != 1:
            raise KeyError(f"no timer {timer_id}")

    def due(self, as_of: datetime, limit: int) -> list[Timer]:
        rows = self._run(self._uow.statements.select_due.rows, {"as_of": as_of, "limit": limit})
        return [_timer_from_row(row) for row in rows]

    def get(self, timer_id: int) -> Timer | None:
        row = self._run(self._uow.statements.select_timer.first, {"timer_id": timer_id})
        return _timer_from_row(row) if row is not None else None

    def finish(self, timer: Timer, fired_at: datetime, fired: bool) -> bool:
        """One UPDATE: the lateness comes from the ``due_at`` the caller read with the timer,
        and the WHERE on the live status and the version makes a finished or rescheduled
        timer a no-op (False) instead of a second read."""
        params = _finish_values(timer, fired_at, fired)
        return self._run_for(timer.case_id, self._uow.statements.finish_live.execute, params) == 1

    def finish_fired(self, timer: Timer, fired_at: datetime) -> None:
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
            _timer_from_row(row) for row in self._run(self._uow.statements.claim_due.rows, params)
        ]
        # RETURNING gives the rows in no particular order.
        claimed.sort(key=lambda timer: (timer.due_at, timer.id or 0))
        return claimed

    def lateness(self, since: datetime) -> list[int]:
        """Lateness of the timers that fired (not the stale ones cancelled when due), oldest
        firing first."""
        rows = self._run(self._uow.statements.select_lateness.rows, {"since": since})
        return [int(row[0]) for row in rows if row[0] is not None]


class SqlOutbox(_Store):
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
        return [_outbox_entry_from_row(row) for row in rows]

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

    def backlog(self) -> int:
        row = self._run(self._uow.statements.count_pending.first, {})
        return int(row[0]) if row is not None else 0

    def oldest_pending_age(self, now: datetime) -> float | None:
        row = self._run(self._uow.statements.oldest_pending.first, {})
        if row is None or row[0] is None:
            return None
        oldest: datetime = row[0]
        return max(0.0, (now - oldest).total_seconds())


class SqlEventStore(_Store):
    def record(self, source: str, event_id: str, case_id: int | None, at: datetime) -> bool:
        params = {"source": source, "event_id": event_id, "case_id": case_id, "received_at": at}
        return self._run(self._uow.statements.record_event.execute, params) == 1

    def record_reading_case(
        self, source: str, event_id: str, case_id: int, at: datetime
    ) -> tuple[bool, Case | None]:
        uow = self._uow
        if uow.dialect_name != "postgresql":
            # SQLite: no INSERT inside WITH, and no round trips to save.
            return self.record(source, event_id, case_id, at), uow._cases.get(case_id)
        params = {
            "source": source,
            "event_id": event_id,
            "case_id": case_id,
            "received_at": at,
            "read_case_id": case_id,
        }
        statement = uow.statements.record_event_reading_case
        assert statement is not None
        row = self._run(statement.first, params)
        assert row is not None  # one row always
        return row[0] == 1, uow._cases._with_timer(row[1:]) if row[1] is not None else None

    def record_checked(self, source: str, event_id: str, case_id: int, at: datetime) -> None:
        params = {"source": source, "event_id": event_id, "case_id": case_id, "received_at": at}
        record = self._uow.statements.record_event
        self._run_checked(record, params, lambda: recorded_meanwhile(source, event_id))

    def recorded(self, ids: Sequence[tuple[str, str]]) -> set[tuple[str, str]]:
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
            self._uow.statements.store_dead_letter.insert, _dead_letter_values(letter)
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
        return [_dead_letter_from_row(row) for row in rows]

    def get_dead_letter(self, letter_id: int) -> DeadLetter | None:
        row = self._run(self._uow.statements.select_dead_letter.first, {"letter_id": letter_id})
        return _dead_letter_from_row(row) if row is not None else None

    def resolve_dead_letter(self, letter_id: int, status: DeadLetterStatus, at: datetime) -> None:
        """Set the status; ``resolved_at`` is ``at``, or cleared when reopened (``OPEN``)."""
        params = {
            "where_id": letter_id,
            "status": status.value,
            "resolved_at": None if status is DeadLetterStatus.OPEN else at,
        }
        if self._run(self._uow.statements.resolve_dead_letter.execute, params) != 1:
            raise KeyError(f"no dead letter {letter_id}")


# -- rows <-> domain objects ----------------------------------------------------------------
# Rows are tuples in table column order (``select(table)``), read through the *_KEYS names.
# Enum members come back from stored values through plain dicts: ``CaseState(value)`` runs the
# enum machinery in Python, several times per row. ``str(member)`` is a StrEnum's value without
# the ``.value`` property's cost.

E = TypeVar("E", bound=StrEnum)


class _ByValue(dict[str, E]):
    """The members of a StrEnum by value; an unknown value fails as the enum itself would."""

    def __init__(self, enum: type[E]) -> None:
        super().__init__((member.value, member) for member in enum)
        self._enum = enum

    def __missing__(self, value: str) -> E:
        return self._enum(value)


_CASE_TYPES = _ByValue(CaseType)
_CASE_STATES = _ByValue(CaseState)
_REFUND_ROUTES = _ByValue(RefundRoute)
_TIMER_STATUSES = _ByValue(TimerStatus)


def _case_values(case: Case) -> dict[str, Any]:
    return {
        "type": case.type.value,
        "state": str(case.state),
        "version": case.version,
        "order_id": case.order_id,
        "buyer_id": case.buyer_id,
        "merchant_id": case.merchant_id,
        "category": case.category,
        "reason": case.reason,
        "description": case.description,
        "payment_channel": case.payment.channel,
        "paid_amount": case.payment.amount,
        "paid_at": case.payment.paid_at,
        "delivered_at": case.delivered_at,
        "items": [
            {"sku": i.sku, "quantity": i.quantity, "unit_price": i.unit_price} for i in case.items
        ],
        "gifts": [{"sku": g.sku, "quantity": g.quantity, "value": g.value} for g in case.gifts],
        "requested_amount": case.requested_amount,
        "refund_amount": case.refund_amount,
        "gift_deduction": case.gift_deduction,
        "refund_route": case.refund_route.value if case.refund_route is not None else None,
        "refund_attempts": case.refund_attempts,
        "refund_key": case.refund_key,
        "submission_key": case.submission_key,
        "details": case.details,
        "created_at": case.created_at,
        "updated_at": case.updated_at,
        **_tracking_values(case),
    }


def _tracking_values(case: Case) -> dict[str, str | None]:
    """The indexed copies of the parcels' tracking numbers kept in ``details``."""
    values: dict[str, str | None] = {}
    for key in ("return_tracking_no", "outbound_tracking_no"):
        value = case.details.get(key)
        values[key] = str(value) if value is not None else None
    return values


def _case_mutable_values(case: Case) -> dict[str, Any]:
    return {
        "state": str(case.state),
        "version": case.version,
        "description": case.description,
        "requested_amount": case.requested_amount,
        "refund_amount": case.refund_amount,
        "gift_deduction": case.gift_deduction,
        "refund_route": str(case.refund_route) if case.refund_route is not None else None,
        "refund_attempts": case.refund_attempts,
        "refund_key": case.refund_key,
        "details": case.details,
        "updated_at": case.updated_at,
        **_tracking_values(case),
    }


#: The Case fields behind the columns save() does not write.
_FIXED_FIELDS = (
    "type",
    "order_id",
    "buyer_id",
    "merchant_id",
    "category",
    "reason",
    "payment",
    "delivered_at",
    "items",
    "gifts",
    "submission_key",
    "created_at",
)


def _fixed_fields(case: Case) -> tuple[Any, ...]:
    return (
        case.type,
        case.order_id,
        case.buyer_id,
        case.merchant_id,
        case.category,
        case.reason,
        case.payment,
        case.delivered_at,
        tuple(case.items),
        tuple(case.gifts),
        case.submission_key,
        case.created_at,
    )


# The unpacking in _case_from_row follows the table's column order.
if _CASE_KEYS != (
    "id", "type", "state", "version", "order_id", "buyer_id", "merchant_id", "category", "reason",
    "description", "payment_channel", "paid_amount", "paid_at", "delivered_at", "items", "gifts",
    "requested_amount", "refund_amount", "gift_deduction", "refund_route", "refund_attempts",
    "refund_key", "submission_key", "details", "created_at", "updated_at", "return_tracking_no",
    "outbound_tracking_no",
):  # fmt: skip
    raise RuntimeError("the cases columns changed: update _case_from_row")


def _id_of(case: Case) -> int:
    """The id of a case read from the database (always set there)."""
    assert case.id is not None
    return case.id


def _case_from_row(row: Sequence[Any]) -> Case:
    (
        case_id, type_, state, version, order_id, buyer_id, merchant_id, category, reason,
        description, payment_channel, paid_amount, paid_at, delivered_at, items, gifts,
        requested_amount, refund_amount, gift_deduction, refund_route, refund_attempts,
        refund_key, submission_key, details, created_at, updated_at,
        _return_tracking_no, _outbound_tracking_no,  # copies of details' values
    ) = row  # fmt: skip
    return Case(
        id=case_id,
        version=version,
        type=_CASE_TYPES[type_],
        state=_CASE_STATES[state],
        order_id=order_id,
        buyer_id=buyer_id,
        merchant_id=merchant_id,
        category=category,
        reason=reason,
        description=description,
        payment=Payment(payment_channel, paid_amount, paid_at),
        delivered_at=delivered_at,
        items=[Item(i["sku"], i["quantity"], i["unit_price"]) for i in items],
        gifts=[Gift(g["sku"], g["quantity"], g["value"]) for g in gifts],
        created_at=created_at,
        updated_at=updated_at,
        requested_amount=requested_amount,
        refund_amount=refund_amount,
        gift_deduction=gift_deduction,
        refund_route=_REFUND_ROUTES[refund_route] if refund_route is not None else None,
        refund_attempts=refund_attempts,
        refund_key=refund_key,
        submission_key=submission_key,
        details=details,
    )


def _record_values(record: TransitionRecord) -> dict[str, Any]:
    return {
        "case_id": record.case_id,
        "seq": record.seq,
        "trigger": record.trigger,
        "from_state": str(record.from_state) if record.from_state is not None else None,
        "to_state": str(record.to_state),
        "actor": record.actor,
        "reason": record.reason,
        "data": record.data,
        "at": record.at,
        "idempotency_key": record.idempotency_key,
    }


def _record_from_row(row: Sequence[Any]) -> TransitionRecord:
    r = dict(zip(_TRANSITION_KEYS, row, strict=True))
    return TransitionRecord(
        case_id=r["case_id"],
        seq=r["seq"],
        trigger=r["trigger"],
        from_state=_CASE_STATES[r["from_state"]] if r["from_state"] is not None else None,
        to_state=_CASE_STATES[r["to_state"]],
        actor=r["actor"],
        at=r["at"],
        reason=r["reason"],
        data=r["data"],
        idempotency_key=r["idempotency_key"],
    )


def _timer_values(timer: Timer) -> dict[str, Any]:
    return {
        "case_id": timer.case_id,
        "kind": timer.kind,
        "trigger": timer.trigger,
        "state": str(timer.state),
        "version": timer.version,
        "due_at": timer.due_at,
        "status": str(timer.status),
        "created_at": timer.created_at,
        "claimed_at": timer.claimed_at,
        "claimed_by": timer.claimed_by,
        "fired_at": timer.fired_at,
        "lateness_ms": None,
    }


# The unpacking in _timer_from_row follows the table's column order.
if _TIMER_KEYS != (
    "id", "case_id", "kind", "trigger", "state", "version", "due_at", "status", "created_at",
    "claimed_at", "claimed_by", "fired_at", "lateness_ms",
):  # fmt: skip
    raise RuntimeError("the timers columns changed: update _timer_from_row")


def _timer_from_row(row: Sequence[Any]) -> Timer:
    (
        timer_id, case_id, kind, trigger, state, version, due_at, status, created_at,
        claimed_at, claimed_by, fired_at, _lateness_ms,
    ) = row  # fmt: skip
    return Timer(
        id=timer_id,
        case_id=case_id,
        kind=kind,
        trigger=trigger,
        state=_CASE_STATES[state],
        version=version,
        due_at=due_at,
        created_at=created_at,
        status=_TIMER_STATUSES[status],
        fired_at=fired_at,
        claimed_at=claimed_at,
        claimed_by=claimed_by,
    )


def _outbox_entry_from_row(row: Sequence[Any]) -> OutboxEntry:
    r = dict(zip(_OUTBOX_KEYS, row, strict=True))
    return OutboxEntry(
        id=r["id"],
        topic=r["topic"],
        case_id=r["case_id"],
        payload=r["payload"],
        created_at=r["created_at"],
        attempts=r["attempts"],
        published_at=r["published_at"],
        completed_at=r["completed_at"],
    )


def _dead_letter_values(letter: DeadLetter) -> dict[str, Any]:
    return {
        "source": letter.source,
        "event_id": letter.event_id,
        "envelope": letter.envelope,
        "reason": letter.reason,
        "code": letter.code,
        "received_at": letter.received_at,
        "status": letter.status.value,
        "attempts": letter.attempts,
        "resolved_at": letter.resolved_at,
    }


def _dead_letter_from_row(row: Sequence[Any]) -> DeadLetter:
    r = dict(zip(_DEAD_LETTER_KEYS, row, strict=True))
    return DeadLetter(
        id=r["id"],
        source=r["source"],
        event_id=r["event_id"],
        envelope=r["envelope"],
        reason=r["reason"],
        code=r["code"],
        received_at=r["received_at"],
        status=DeadLetterStatus(r["status"]),
        attempts=r["attempts"],
        resolved_at=r["resolved_at"],
    )


# -- database errors --------------------------------------------------------------------------


def _retryable(exc: DBAPIError) -> bool:
    """Lost a race (serialization failure, deadlock, lock timeout), not a bug."""
    if getattr(exc.orig, "sqlstate", None) in _PG_RETRYABLE:
        return True
    name = getattr(exc.orig, "sqlite_errorname", "") or ""
    return name.startswith(("SQLITE_BUSY", "SQLITE_LOCKED"))


def _finish_values(timer: Timer, fired_at: datetime, fired: bool = True) -> dict[str, Any]:
    return {
        "where_id": timer.id,
        "where_version": timer.version,
        "status": (TimerStatus.FIRED if fired else TimerStatus.CANCELLED).value,
        "fired_at": fired_at,
        "lateness_ms": round((fired_at - timer.due_at).total_seconds() * 1000),
    }


def _deferred_unique_violation(exc: DBAPIError) -> bool:
    deferred = getattr(exc, "deferred_write", False)
    return deferred and isinstance(exc, IntegrityError) and _unique_violation(exc)


def _unique_violation(exc: IntegrityError) -> bool:
    if getattr(exc.orig, "sqlstate", None) == _PG_UNIQUE_VIOLATION:
        return True
    return getattr(exc.orig, "sqlite_errorname", None) in _SQLITE_UNIQUE


def _reason(exc: DBAPIError) -> str:
    return str(exc.orig).strip().splitlines()[0] if exc.orig is not None else str(exc)
