"""Domain objects: a case, its lines, and the records a transition leaves behind."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any

from workflow.errors import InvalidInput
from workflow.states import TERMINAL_STATES, CaseState, CaseType, Role


@dataclass(frozen=True)
class Actor:
    """Who acts: a role and, for buyers and merchants, whose account (``buyer:b-17``)."""

    role: Role
    id: str | None = None

    @classmethod
    def parse(cls, text: str) -> Actor:
        role_text, _, ident = text.partition(":")
        try:
            role = Role(role_text.strip())
        except ValueError:
            roles = ", ".join(r.value for r in Role)
            raise InvalidInput(f"unknown role {role_text!r} (one of {roles})", "actor") from None
        owner = ident.strip() or None
        if role in (Role.BUYER, Role.MERCHANT) and owner is None:
            raise InvalidInput(f"a {role.value} acts as {role.value}:ID", "actor")
        return cls(role, owner)

    def __str__(self) -> str:
        return f"{self.role.value}:{self.id}" if self.id else self.role.value


SYSTEM = Actor(Role.SYSTEM)


@dataclass(frozen=True)
class Item:
    sku: str
    quantity: int
    #: Paid price of one unit, in fen.
    unit_price: int

    @property
    def amount(self) -> int:
        return self.quantity * self.unit_price


@dataclass(frozen=True)
class Gift:
    sku: str
    quantity: int
    #: Declared value of one unit, in fen: the most a missing gift takes off the refund.
    value: int


@dataclass(frozen=True)
class Payment:
    channel: str
    #: What the buyer paid for the order, in fen.
    amount: int
    paid_at: datetime


class RefundRoute(StrEnum):
    ORIGINAL_CHANNEL = "original_channel"
    BANK_TRANSFER = "bank_transfer"


@dataclass
class Case:
    """One after-sales case. Money is integer fen; times are aware UTC."""

    type: CaseType
    state: CaseState
    order_id: str
    buyer_id: str
    merchant_id: str
    category: str
    reason: str
    payment: Payment
    delivered_at: datetime | None
    items: list[Item]
    gifts: list[Gift]
    created_at: datetime
    updated_at: datetime
    description: str = ""
    id: int | None = None
    version: int = 1
    #: What the buyer asked for, when less than the items' paid amount (a partial refund).
    requested_amount: int | None = None
    #: What will be (or was) refunded: items or requested amount, capped, less gift deductions.
    refund_amount: int = 0
    gift_deduction: int = 0
    refund_route: RefundRoute | None = None
    refund_attempts: int = 0
    #: Idempotency key of the current refund attempt, persisted before the payment call.
    refund_key: str | None = None
    submission_key: str | None = None
    #: Facts gathered on the way: tracking numbers, pickup info, gifts missing, flags.
    details: dict[str, Any] = field(default_factory=dict)

    @property
    def is_terminal(self) -> bool:
        return self.state in TERMINAL_STATES

    @property
    def items_amount(self) -> int:
        return sum(item.amount for item in self.items)

    @property
    def skus(self) -> list[str]:
        return [item.sku for item in self.items]


def cases_by_reference(
    cases: Iterable[Case], order_id: str | None = None, tracking_no: str | None = None
) -> list[Case]:
    """``CaseRepository.by_reference`` over cases in hand: with ``tracking_no``, those (in any
    state) whose return or outbound parcel has it, of ``order_id`` too when given; with
    ``order_id`` alone, the order's open cases. Newest first."""
    if order_id is None and tracking_no is None:
        raise ValueError("by_reference() needs an order_id or a tracking_no")
    found = []
    for case in sorted(cases, key=lambda case: case.id or 0, reverse=True):
        if order_id is not None and case.order_id != order_id:
            continue
        if tracking_no is not None:
            numbers = (
                case.details.get("return_tracking_no"),
                case.details.get("outbound_tracking_no"),
            )
            if tracking_no not in {str(n) for n in numbers if n is not None}:
                continue
        elif case.is_terminal:
            continue
        found.append(case)
    return found


@dataclass(frozen=True)
class TransitionRecord:
    """One row of the append-only transition log. ``seq`` equals the case version it produced."""

    case_id: int
    seq: int
    trigger: str
    from_state: CaseState | None
    to_state: CaseState
    actor: str
    at: datetime
    reason: str | None = None
    data: dict[str, Any] = field(default_factory=dict)
    idempotency_key: str | None = None
    #: The channel it came through: ``cli``, ``api token #7``, ``event sf-express/E1``,
    #: ``timer``, ``worker`` (``workflow.sources``); None in records older than the column.
    source: str | None = None


class TimerStatus(StrEnum):
    PENDING = "pending"
    #: Taken by a sweeper; reclaimed if not finished in time.
    CLAIMED = "claimed"
    FIRED = "fired"
    #: Disarmed because the case left the state, or found stale when due.
    CANCELLED = "cancelled"


@dataclass
class Timer:
    """A deadline armed when the case entered ``state`` at ``version``."""

    case_id: int
    kind: str
    trigger: str
    state: CaseState
    version: int
    due_at: datetime
    created_at: datetime
    status: TimerStatus = TimerStatus.PENDING
    id: int | None = None
    fired_at: datetime | None = None
    claimed_at: datetime | None = None
    claimed_by: str | None = None


@dataclass(frozen=True)
class OutboxMessage:
    """A side effect to run after commit (relayed by the workers)."""

    topic: str
    case_id: int
    payload: dict[str, Any]
    created_at: datetime


@dataclass(frozen=True)
class OutboxEntry:
    """A stored outbox row, as the relay reads it."""

    id: int
    topic: str
    case_id: int
    payload: dict[str, Any]
    created_at: datetime
    #: How many times the relay published it (a republish after a loss counts again).
    attempts: int = 0
    #: When the relay last published it.
    published_at: datetime | None = None
    #: When a consumer finished with it (done, skipped or failed for good); the relay publishes
    #: a row again until then.
    completed_at: datetime | None = None
    #: When the relay gave up on it: published ``attempts`` times and never completed. Not
    #: published again until an operator retries it.
    parked_at: datetime | None = None


class DeadLetterStatus(StrEnum):
    #: Waiting for someone to look at it (or replay it).
    OPEN = "open"
    #: Replayed and applied.
    REPLAYED = "replayed"
    #: Looked at and set aside by an operator.
    DISCARDED = "discarded"


@dataclass
class DeadLetter:
    """An inbound event that could not apply, kept with the reason; nothing is dropped."""

    source: str
    event_id: str | None
    envelope: dict[str, Any]
    reason: str
    #: The stable error code (``not_found``, ``not_allowed``, ``invalid_input``, ...).
    code: str
    received_at: datetime
    status: DeadLetterStatus = DeadLetterStatus.OPEN
    id: int | None = None
    attempts: int = 1
    resolved_at: datetime | None = None
    #: Who replayed or discarded it (``admin:ops-1``), and why.
    resolved_by: str | None = None
    resolution: str | None = None
