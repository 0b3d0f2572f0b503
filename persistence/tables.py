"""The relational schema, declared as SQLModel tables.

The stores in ``stores/`` use the Core ``Table`` objects exported at the bottom (``cases`` etc.),
not ORM sessions: the classes are the single declaration of columns and constraints, which the
migrations must reproduce exactly (``tests/integration`` compares them).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlmodel import Field, SQLModel

from persistence.types import BigId, JSONDocument, UTCDateTime

#: Timer statuses that still hold the case's one live timer slot.
LIVE_TIMER_STATUSES = ("pending", "claimed")
_LIVE_TIMER = sa.text("status IN ('pending', 'claimed')")
#: Transitions into a dispute: whether a case was ever disputed.
_INTO_DISPUTE = sa.text("to_state = 'disputed'")
#: Outbox rows no consumer has completed yet and the relay has not parked (migration 0010).
_PENDING_OUTBOX = sa.text("completed_at IS NULL AND parked_at IS NULL")
#: ... and not yet published: what the relay publishes first. (A parked row was published, and
#: a retry clears both times at once, so this needs no ``parked_at`` term.)
_UNPUBLISHED_OUTBOX = sa.text("completed_at IS NULL AND published_at IS NULL")
#: ... published and not completed: the relay publishes them again once they are old.
_IN_FLIGHT_OUTBOX = sa.text(
    "completed_at IS NULL AND parked_at IS NULL AND published_at IS NOT NULL"
)
#: Parked and not completed since: what ``aftersales outbox parked`` lists.
_PARKED_OUTBOX = sa.text("completed_at IS NULL AND parked_at IS NOT NULL")


def _case_fk(name: str, *, nullable: bool = False) -> Any:
    return Field(
        sa_column=sa.Column(
            "case_id",
            sa.BigInteger(),
            sa.ForeignKey("cases.id", name=name),
            nullable=nullable,
        )
    )


def _id() -> Any:
    return Field(default=None, sa_column=sa.Column("id", BigId, primary_key=True))


def _time(name: str, *, nullable: bool = False) -> Any:
    return Field(sa_column=sa.Column(name, UTCDateTime(), nullable=nullable))


def _json(name: str) -> Any:
    return Field(sa_column=sa.Column(name, JSONDocument, nullable=False))


def _money(name: str, *, nullable: bool = False) -> Any:
    # Fen of a large order can exceed 2**31.
    return Field(sa_column=sa.Column(name, sa.BigInteger(), nullable=nullable))


class CaseRow(SQLModel, table=True):
    __tablename__ = "cases"
    __table_args__ = (
        sa.UniqueConstraint("submission_key", name="uq_cases_submission_key"),
        sa.Index("ix_cases_state", "state"),
        sa.Index("ix_cases_merchant_id_id", "merchant_id", "id"),
        # A merchant's queue of one state in id order (migration 0011).
        sa.Index("ix_cases_merchant_id_state_id", "merchant_id", "state", "id"),
        # The queue by age, and the merchants' figures of a period (migration 0011).
        sa.Index("ix_cases_created_at_id", "created_at", "id"),
        sa.Index("ix_cases_buyer_id_id", "buyer_id", "id"),
        sa.Index("ix_cases_order_id", "order_id"),
        # Carrier events name a parcel, not a case: finding its case is an index lookup.
        sa.Index("ix_cases_return_tracking_no", "return_tracking_no"),
        sa.Index("ix_cases_outbound_tracking_no", "outbound_tracking_no"),
    )

    id: int | None = _id()
    type: str
    state: str
    version: int
    order_id: str
    buyer_id: str
    merchant_id: str
    category: str
    reason: str
    description: str
    payment_channel: str
    paid_amount: int = _money("paid_amount")
    paid_at: datetime = _time("paid_at")
    delivered_at: datetime | None = _time("delivered_at", nullable=True)
    items: list[dict[str, Any]] = _json("items")
    gifts: list[dict[str, Any]] = _json("gifts")
    requested_amount: int | None = _money("requested_amount", nullable=True)
    refund_amount: int = _money("refund_amount")
    gift_deduction: int = _money("gift_deduction")
    refund_route: str | None = None
    refund_attempts: int
    refund_key: str | None = None
    submission_key: str | None = None
    details: dict[str, Any] = _json("details")
    created_at: datetime = _time("created_at")
    updated_at: datetime = _time("updated_at")
    #: Copies of ``details['return_tracking_no']`` / ``['outbound_tracking_no']``, kept in step
    #: by the repository's add() and save(), so carrier events find their case by index.
    return_tracking_no: str | None = None
    outbound_tracking_no: str | None = None


class TransitionRow(SQLModel, table=True):
    """The append-only log; ``seq`` is the case version the transition produced."""

    __tablename__ = "transitions"
    __table_args__ = (
        sa.UniqueConstraint("case_id", "seq", name="uq_transitions_case_id_seq"),
        # The queue's "disputed" filter and the dispute rate (migration 0011).
        sa.Index(
            "ix_transitions_disputed_case_id",
            "case_id",
            sqlite_where=_INTO_DISPUTE,
            postgresql_where=_INTO_DISPUTE,
        ),
    )

    id: int | None = _id()
    case_id: int = _case_fk("fk_transitions_case_id")
    seq: int
    trigger: str
    from_state: str | None = None
    to_state: str
    actor: str
    reason: str | None = None
    data: dict[str, Any] = _json("data")
    at: datetime = _time("at")
    # Every record of one trigger call carries the call's key; uniqueness lives in
    # ``idempotency_keys`` because a call may write several records (a trigger and follow-ups).
    idempotency_key: str | None = None
    #: The channel the transition came through (``TransitionRecord.source``); migration 0008.
    source: str | None = None


class IdempotencyKeyRow(SQLModel, table=True):
    """One row per trigger call that carried a key: a replayed call cannot log twice."""

    __tablename__ = "idempotency_keys"
    # A key is one call's, on whichever case: reused on another, the insert fails (0008).
    __table_args__ = (sa.Index("uq_idempotency_keys_key", "key", unique=True),)

    case_id: int = Field(
        sa_column=sa.Column(
            "case_id",
            sa.BigInteger(),
            sa.ForeignKey("cases.id", name="fk_idempotency_keys_case_id"),
            primary_key=True,
        )
    )
    key: str = Field(primary_key=True)
    #: ``seq`` of the call's first transition record.
    first_seq: int


class TimerRow(SQLModel, table=True):
    __tablename__ = "timers"
    __table_args__ = (
        # The sweep's claim: due timers in (due_at, id) order, read in index order up to the
        # batch even when thousands share one due instant (migration 0005).
        sa.Index("ix_timers_status_due_at_id", "status", "due_at", "id"),
        # The queue by deadline: the live timers in due-time order, the page read off the index
        # (migration 0011; the claim's index above leads with the status, so a read of both
        # live statuses in due-time order would have to merge or sort).
        sa.Index(
            "ix_timers_live_due_at_case_id",
            "due_at",
            "case_id",
            sqlite_where=_LIVE_TIMER,
            postgresql_where=_LIVE_TIMER,
        ),
        # A case's timers: its page, and whether a merchant's deadline fired (migration 0011).
        sa.Index("ix_timers_case_id", "case_id"),
        # The sweeper's lateness report reads the timers fired since a time.
        sa.Index("ix_timers_fired_at", "fired_at"),
        # The database, not the sweeper's care, guarantees a case never has two live deadlines.
        sa.Index(
            "uq_timers_live_case_id",
            "case_id",
            unique=True,
            sqlite_where=_LIVE_TIMER,
            postgresql_where=_LIVE_TIMER,
        ),
    )

    id: int | None = _id()
    case_id: int = _case_fk("fk_timers_case_id")
    kind: str
    trigger: str
    state: str
    version: int
    due_at: datetime = _time("due_at")
    status: str
    created_at: datetime = _time("created_at")
    claimed_at: datetime | None = _time("claimed_at", nullable=True)
    claimed_by: str | None = None
    fired_at: datetime | None = _time("fired_at", nullable=True)
    #: How long after ``due_at`` the timer fired: the sweeper's delay, for monitoring.
    lateness_ms: int | None = Field(
        default=None, sa_column=sa.Column("lateness_ms", sa.BigInteger(), nullable=True)
    )


class OutboxRow(SQLModel, table=True):
    """A message to publish after commit. Pending until a consumer completes it: the relay
    publishes it again when it was published long ago and is still not completed (the broker
    lost it, or its consumer died)."""

    __tablename__ = "outbox"
    __table_args__ = (
        # The relay's read: pending rows in id order. Partial, so it holds only the few pending
        # rows, not the completed ones that make up nearly all of the table.
        sa.Index(
            "ix_outbox_pending_id",
            "id",
            sqlite_where=_PENDING_OUTBOX,
            postgresql_where=_PENDING_OUTBOX,
        ),
        # The relay's two reads (migration 0006): rows never published, in id order, and rows
        # published before the redelivery window, by publish time. Through the index above, a
        # relay stepped over every row published and still in flight to reach the unpublished
        # ones: with 100,000 notices queued after a burst of timers, every relay read them all.
        sa.Index(
            "ix_outbox_unpublished_id",
            "id",
            sqlite_where=_UNPUBLISHED_OUTBOX,
            postgresql_where=_UNPUBLISHED_OUTBOX,
        ),
        sa.Index(
            "ix_outbox_in_flight_published_at",
            "published_at",
            sqlite_where=_IN_FLIGHT_OUTBOX,
            postgresql_where=_IN_FLIGHT_OUTBOX,
        ),
        sa.Index(
            "ix_outbox_parked_id",
            "id",
            sqlite_where=_PARKED_OUTBOX,
            postgresql_where=_PARKED_OUTBOX,
        ),
    )

    id: int | None = _id()
    topic: str
    # No foreign key: the outbox is a transport queue, pruned on its own schedule.
    case_id: int = Field(sa_column=sa.Column("case_id", sa.BigInteger(), nullable=False))
    payload: dict[str, Any] = _json("payload")
    created_at: datetime = _time("created_at")
    published_at: datetime | None = _time("published_at", nullable=True)
    attempts: int = Field(
        default=0,
        sa_column=sa.Column("attempts", sa.Integer(), nullable=False, server_default="0"),
    )
    completed_at: datetime | None = _time("completed_at", nullable=True)
    #: When the relay gave up publishing it: ``attempts`` reached the configured maximum and no
    #: consumer completed it (migration 0010). Cleared by an operator's retry.
    parked_at: datetime | None = _time("parked_at", nullable=True)


class OutboxRetryRow(SQLModel, table=True):
    """An operator's retry of a parked outbox row (``aftersales outbox retry``): who, when, and
    what the row had been through. Appended, never changed."""

    __tablename__ = "outbox_retries"
    __table_args__ = (sa.Index("ix_outbox_retries_outbox_id", "outbox_id"),)

    id: int | None = _id()
    # No foreign key, as for the outbox's own rows: the outbox is pruned on its own schedule.
    outbox_id: int = Field(sa_column=sa.Column("outbox_id", sa.BigInteger(), nullable=False))
    retried_by: str
    retried_at: datetime = _time("retried_at")
    reason: str
    #: The row's publish count and parking time before the retry reset them.
    attempts: int
    parked_at: datetime = _time("parked_at")


class TaskStatRow(SQLModel, table=True):
    """How many Celery tasks ran, by name and outcome, in duration buckets: what every worker
    process adds, every few seconds, for ``/metrics`` (``tasks.task_stats``; migration 0010).

    Rows only grow. ``le_ms`` is the bucket's upper bound in milliseconds (-1: above the last
    bound); ``count`` and ``seconds_sum`` are that bucket's own, not cumulative."""

    __tablename__ = "task_stats"

    task: str = Field(primary_key=True)
    outcome: str = Field(primary_key=True)
    le_ms: int = Field(sa_column=sa.Column("le_ms", sa.BigInteger(), primary_key=True))
    count: int = Field(sa_column=sa.Column("count", sa.BigInteger(), nullable=False))
    seconds_sum: float = Field(sa_column=sa.Column("seconds_sum", sa.Float(), nullable=False))


class InboundEventRow(SQLModel, table=True):
    """Inbound events (carrier, payment) already processed, so a redelivery is a no-op."""

    __tablename__ = "inbound_events"

    source: str = Field(primary_key=True)
    event_id: str = Field(primary_key=True)
    # Nullable and without a foreign key: an event may name a case this service does not know.
    case_id: int | None = Field(
        default=None, sa_column=sa.Column("case_id", sa.BigInteger(), nullable=True)
    )
    received_at: datetime = _time("received_at")


class DeadLetterRow(SQLModel, table=True):
    """Inbound events that could not apply, kept with the reason until replayed or discarded.

    The same bad event delivered again (same ``source`` and ``event_id``) updates its row's
    ``attempts`` instead of adding one; events without an id (NULLs are distinct) always add one.
    """

    __tablename__ = "dead_letters"
    __table_args__ = (
        sa.UniqueConstraint("source", "event_id", name="uq_dead_letters_source_event_id"),
        sa.Index("ix_dead_letters_status_id", "status", "id"),
    )

    id: int | None = _id()
    source: str
    event_id: str | None = None
    envelope: dict[str, Any] = _json("envelope")
    reason: str
    code: str
    received_at: datetime = _time("received_at")
    status: str
    attempts: int
    resolved_at: datetime | None = _time("resolved_at", nullable=True)
    #: Who replayed or discarded it, and why (migration 0008).
    resolved_by: str | None = None
    resolution: str | None = None


class OrderRow(SQLModel, table=True):
    """An order of record (``workflow.orders.Order``). Lines and gifts are JSON documents: they
    are read and written with their order, never queried apart."""

    __tablename__ = "orders"
    __table_args__ = (
        sa.Index("ix_orders_buyer_id", "buyer_id"),
        sa.Index("ix_orders_merchant_id", "merchant_id"),
    )

    order_id: str = Field(primary_key=True)
    buyer_id: str
    merchant_id: str
    payment_channel: str
    paid_amount: int = _money("paid_amount")
    paid_at: datetime = _time("paid_at")
    delivered_at: datetime | None = _time("delivered_at", nullable=True)
    #: ``[{"sku", "quantity", "unit_price", "category"}]``
    lines: list[dict[str, Any]] = _json("lines")
    #: ``[{"sku", "quantity", "value"}]``
    gifts: list[dict[str, Any]] = _json("gifts")
    #: Built by migration 0007 from an existing case's snapshot.
    migrated: bool
    imported_at: datetime = _time("imported_at")
    updated_at: datetime = _time("updated_at")


class ApiTokenRow(SQLModel, table=True):
    """A bearer token of the HTTP API. Only the SHA-256 of the secret is kept: the secret is
    shown once, when the token is created, and cannot be read back."""

    __tablename__ = "api_tokens"
    __table_args__ = (sa.UniqueConstraint("token_hash", name="uq_api_tokens_token_hash"),)

    id: int | None = _id()
    #: Hex SHA-256 of the secret (64 characters).
    token_hash: str
    #: ``admin``, ``merchant``, ``buyer`` or ``producer``.
    role: str
    #: The merchant or buyer id, the producer's event source, an admin's name (optional).
    subject: str | None = None
    name: str | None = None
    created_at: datetime = _time("created_at")
    revoked_at: datetime | None = _time("revoked_at", nullable=True)
    #: From then on the token answers 401 (``tokens create --expires-in``); null: never.
    expires_at: datetime | None = _time("expires_at", nullable=True)
    #: When a request last authenticated with it, to the minute (written at most once a minute).
    last_used_at: datetime | None = _time("last_used_at", nullable=True)


class ApiIdempotencyRow(SQLModel, table=True):
    """The first response to a POST that carried an ``Idempotency-Key``, replayed to repeats.

    Scoped by token, method and path: two clients, or two endpoints, never share a key. A row
    without ``status`` is a request still running (or one whose process died: taken over after
    a while).
    """

    __tablename__ = "api_idempotency"
    __table_args__ = (sa.Index("ix_api_idempotency_created_at", "created_at"),)

    token_id: int = Field(
        sa_column=sa.Column(
            "token_id",
            sa.BigInteger(),
            sa.ForeignKey("api_tokens.id", name="fk_api_idempotency_token_id"),
            primary_key=True,
        )
    )
    key: str = Field(primary_key=True)
    method: str = Field(primary_key=True)
    path: str = Field(primary_key=True)
    #: SHA-256 of the request (query and canonical JSON body): a key reused for another request
    #: is refused instead of answered with the first one's response.
    fingerprint: str
    created_at: datetime = _time("created_at")
    status: int | None = None
    headers: dict[str, Any] = _json("headers")
    body: str | None = Field(default=None, sa_column=sa.Column("body", sa.Text(), nullable=True))


metadata = SQLModel.metadata

cases: sa.Table = metadata.tables["cases"]
transitions: sa.Table = metadata.tables["transitions"]
idempotency_keys: sa.Table = metadata.tables["idempotency_keys"]
timers: sa.Table = metadata.tables["timers"]
outbox: sa.Table = metadata.tables["outbox"]
outbox_retries: sa.Table = metadata.tables["outbox_retries"]
task_stats: sa.Table = metadata.tables["task_stats"]
inbound_events: sa.Table = metadata.tables["inbound_events"]
dead_letters: sa.Table = metadata.tables["dead_letters"]
api_tokens: sa.Table = metadata.tables["api_tokens"]
orders: sa.Table = metadata.tables["orders"]
api_idempotency: sa.Table = metadata.tables["api_idempotency"]
