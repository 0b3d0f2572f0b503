"""The fixed SQL statements of the stores, built once and compiled once per dialect.

Queue-like reads (timers due, outbox rows to publish) lock what they take with ``FOR UPDATE SKIP
LOCKED`` on PostgreSQL, so concurrent sweepers and relays get disjoint rows without waiting; on
SQLite every transaction holds the one write lock from its first statement (``BEGIN IMMEDIATE``).
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Callable
from typing import Any, TypeVar

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Dialect
from sqlalchemy.sql import ClauseElement

from persistence.case_search import SearchShape, search_statement
from persistence.fastsql import Prepared, insert_returning_id
from persistence.tables import (
    cases,
    dead_letters,
    idempotency_keys,
    inbound_events,
    orders,
    outbox,
    outbox_retries,
    timers,
    transitions,
)
from workflow.model import TimerStatus
from workflow.states import TERMINAL_STATES

K = TypeVar("K")

#: Ended cases: ``by_reference(order_id=...)`` lists the others.
_TERMINAL: list[sa.ColumnElement[Any]] = [
    sa.literal_column(f"'{state.value}'") for state in sorted(TERMINAL_STATES)
]

# PostgreSQL SQLSTATEs that mean "a concurrent transaction got in the way; retry".
# Literals, not bind parameters: the planners can only use the partial unique index on live
# timers when the query repeats its predicate verbatim.
_LIVE = timers.c.status.in_([sa.literal_column("'pending'"), sa.literal_column("'claimed'")])


def _all_but(table: sa.Table, *excluded: str) -> list[str]:
    return [column.key for column in table.columns if column.key not in excluded]


_CASE_INSERT_COLUMNS = _all_but(cases, "id")
#: What transitions change. The rest is the application, fixed at submission: not writing it
#: keeps the database from rewriting the indexes on those columns at every transition.
CASE_MUTABLE_COLUMNS = (
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

_SELECT_CASE_BY_KEY = sa.select(cases).where(cases.c.submission_key == sa.bindparam("key"))
# WHERE parameters must not share a name with a column the statement sets.
_UPDATE_CASE = sa.update(cases).where(
    cases.c.id == sa.bindparam("where_id"), cases.c.version == sa.bindparam("where_version")
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
_SELECT_ORDER = sa.select(orders).where(orders.c.order_id == sa.bindparam("order_id"))
# SQLite renders no FOR UPDATE: its writers are serialised by BEGIN IMMEDIATE already.
_LOCK_ORDER_ROW = _SELECT_ORDER.with_for_update()
_SET_ORDER_DELIVERED = sa.update(orders).where(orders.c.order_id == sa.bindparam("where_order_id"))

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
CASE_WIDTH = len(cases.columns)
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
# when the query repeats it. Parked rows (migration 0010) are not pending: the relay leaves them.
_NOT_COMPLETED = outbox.c.completed_at.is_(None)
_PENDING_OUTBOX = sa.and_(_NOT_COMPLETED, outbox.c.parked_at.is_(None))
# ``ix_outbox_parked_id``'s predicate.
_PARKED_OUTBOX = sa.and_(_NOT_COMPLETED, outbox.c.parked_at.is_not(None))
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
# Only rows not completed: a second completion keeps the first time. A parked row's consumer
# that finishes after all (a late redelivery, a retry) completes it too.
_MARK_COMPLETED = (
    sa.update(outbox)
    .where(outbox.c.id == sa.bindparam("where_id"), _NOT_COMPLETED)
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
    .where(outbox.c.id == sa.any_(_ID_LIST), _NOT_COMPLETED)
    .values(completed_at=sa.bindparam("at", type_=outbox.c.completed_at.type))
)
# A consumer waiting to retry moves its row's publish time to when the retry runs, so the
# relay's redelivery window starts from there instead of republishing a live retry chain.
_POSTPONE = (
    sa.update(outbox)
    .where(outbox.c.id == sa.bindparam("where_id"), _PENDING_OUTBOX)
    .values(published_at=sa.bindparam("until", type_=outbox.c.published_at.type))
)
# The relay gives up on a row: it leaves the relay's reads until an operator retries it.
_PARK = (
    sa.update(outbox)
    .where(outbox.c.id == sa.bindparam("where_id"), _PENDING_OUTBOX)
    .values(parked_at=sa.bindparam("at", type_=outbox.c.parked_at.type))
)
_SELECT_PARKED = (
    sa.select(outbox)
    .where(_PARKED_OUTBOX, outbox.c.id > sa.bindparam("after_id"))
    .order_by(outbox.c.id)
    .limit(sa.bindparam("limit"))
)
# One parked row, locked until the retry's transaction ends: two operators retrying it at once
# write one retry record, not two.
_LOCK_PARKED = (
    sa.select(outbox)
    .where(_PARKED_OUTBOX, outbox.c.id == sa.bindparam("where_id"))
    .with_for_update()
)
# Back to a fresh row: never published, no attempts, so the relay publishes it at its next run
# and it gets the whole attempt budget again (the retry record keeps what it had been through).
_UNPARK = (
    sa.update(outbox)
    .where(outbox.c.id == sa.bindparam("where_id"), _PARKED_OUTBOX)
    .values(parked_at=sa.null(), published_at=sa.null(), attempts=sa.literal_column("0"))
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
        resolved_by=sa.bindparam("resolved_by", type_=dead_letters.c.resolved_by.type),
        resolution=sa.bindparam("resolution", type_=dead_letters.c.resolution.type),
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


class Statements:
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
        self.update_case = write(_UPDATE_CASE, *CASE_MUTABLE_COLUMNS)
        self.select_order = select(_SELECT_ORDER)
        self.lock_order_row = select(_LOCK_ORDER_ROW)
        self.insert_order = write(sa.insert(orders), *_all_but(orders))
        self.set_order_delivered = write(_SET_ORDER_DELIVERED, "delivered_at", "updated_at")
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
        self.park = write(_PARK)
        self.select_parked = select(_SELECT_PARKED)
        self.lock_parked = select(_LOCK_PARKED)
        self.unpark = write(_UNPARK)
        self.insert_outbox_retry = write(sa.insert(outbox_retries), *_all_but(outbox_retries, "id"))
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
        self._cases_with_timers: dict[tuple[str, int], Prepared] = {}
        self._case_searches: dict[SearchShape, Prepared] = {}

    def case_list(self, filters: frozenset[str]) -> Prepared:
        """``CaseRepository.list`` with these of ``_CASE_LIST_FILTERS`` given, and a limit."""

        def build() -> sa.Select[Any]:
            statement = sa.select(cases)
            for name in _CASE_LIST_FILTERS:
                if name in filters:
                    statement = statement.where(_CASE_LIST_FILTERS[name])
            return statement.order_by(cases.c.id).limit(sa.bindparam("limit"))

        return self._compiled_once(self._case_lists, filters, build)

    @property
    def dialect(self) -> Dialect:
        return self._dialect

    def case_search(self, shape: SearchShape) -> Prepared:
        """``CaseRepository.search`` of this shape: case columns, then the live timer's."""
        return self._compiled_once(self._case_searches, shape, lambda: search_statement(shape))

    def cases_with_timers(self, key: str, count: int) -> Prepared:
        """The case rows whose column ``key`` (``id``, ``order_id``) is one of ``count`` values
        (``<key>_0`` ...), with their live timers, as ``select_case_and_timer``: a batch's
        cases in one SELECT."""

        def build() -> sa.Select[Any]:
            column = cases.c[key]
            values = [sa.bindparam(f"{key}_{i}", type_=column.type) for i in range(count)]
            return _CASES_AND_TIMERS.where(column.in_(values))

        return self._compiled_once(self._cases_with_timers, (key, count), build)

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


_compiled: weakref.WeakKeyDictionary[Dialect, Statements] = weakref.WeakKeyDictionary()
_compiled_lock = threading.Lock()


def statements_for(dialect: Dialect) -> Statements:
    statements = _compiled.get(dialect)
    if statements is None:
        with _compiled_lock:
            statements = _compiled.get(dialect)
            if statements is None:
                statements = _compiled[dialect] = Statements(dialect)
    return statements
