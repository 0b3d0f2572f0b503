"""Rows <-> domain objects: the values a store writes for a case, record, timer, dead letter, and
the objects it reads back.

Rows are tuples in table column order (``select(table)``), read through the *_KEYS names.
Enum members come back from stored values through plain dicts: ``CaseState(value)`` runs the
enum machinery in Python, several times per row. ``str(member)`` is a StrEnum's value without
the ``.value`` property's cost.
"""

from __future__ import annotations

from collections.abc import Sequence
from enum import StrEnum
from typing import Any, TypeVar

from persistence.tables import cases, dead_letters, outbox, timers, transitions
from workflow.model import (
    Case,
    DeadLetter,
    DeadLetterStatus,
    Gift,
    Item,
    OutboxEntry,
    Payment,
    RefundRoute,
    Timer,
    TimerStatus,
    TransitionRecord,
)
from workflow.states import CaseState, CaseType

CASE_KEYS = tuple(column.key for column in cases.columns)
TRANSITION_KEYS = tuple(column.key for column in transitions.columns)
TIMER_KEYS = tuple(column.key for column in timers.columns)
OUTBOX_KEYS = tuple(column.key for column in outbox.columns)
DEAD_LETTER_KEYS = tuple(column.key for column in dead_letters.columns)
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


def case_values(case: Case) -> dict[str, Any]:
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


def case_mutable_values(case: Case) -> dict[str, Any]:
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
FIXED_FIELDS = (
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


def fixed_fields(case: Case) -> tuple[Any, ...]:
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


# The unpacking in case_from_row follows the table's column order.
if CASE_KEYS != (
    "id", "type", "state", "version", "order_id", "buyer_id", "merchant_id", "category", "reason",
    "description", "payment_channel", "paid_amount", "paid_at", "delivered_at", "items", "gifts",
    "requested_amount", "refund_amount", "gift_deduction", "refund_route", "refund_attempts",
    "refund_key", "submission_key", "details", "created_at", "updated_at", "return_tracking_no",
    "outbound_tracking_no",
):  # fmt: skip
    raise RuntimeError("the cases columns changed: update case_from_row")


def id_of(case: Case) -> int:
    """The id of a case read from the database (always set there)."""
    assert case.id is not None
    return case.id


def case_from_row(row: Sequence[Any]) -> Case:
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


def record_values(record: TransitionRecord) -> dict[str, Any]:
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
        "source": record.source,
    }


def record_from_row(row: Sequence[Any]) -> TransitionRecord:
    r = dict(zip(TRANSITION_KEYS, row, strict=True))
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
        source=r["source"],
    )


def timer_values(timer: Timer) -> dict[str, Any]:
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


# The unpacking in timer_from_row follows the table's column order.
if TIMER_KEYS != (
    "id", "case_id", "kind", "trigger", "state", "version", "due_at", "status", "created_at",
    "claimed_at", "claimed_by", "fired_at", "lateness_ms",
):  # fmt: skip
    raise RuntimeError("the timers columns changed: update timer_from_row")


def timer_from_row(row: Sequence[Any]) -> Timer:
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


def outbox_entry_from_row(row: Sequence[Any]) -> OutboxEntry:
    r = dict(zip(OUTBOX_KEYS, row, strict=True))
    return OutboxEntry(
        id=r["id"],
        topic=r["topic"],
        case_id=r["case_id"],
        payload=r["payload"],
        created_at=r["created_at"],
        attempts=r["attempts"],
        published_at=r["published_at"],
        completed_at=r["completed_at"],
        parked_at=r["parked_at"],
    )


def dead_letter_values(letter: DeadLetter) -> dict[str, Any]:
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
        "resolved_by": letter.resolved_by,
        "resolution": letter.resolution,
    }


def dead_letter_from_row(row: Sequence[Any]) -> DeadLetter:
    r = dict(zip(DEAD_LETTER_KEYS, row, strict=True))
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
        resolved_by=r["resolved_by"],
        resolution=r["resolution"],
    )
