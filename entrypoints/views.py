"""What callers see: cases, history entries and timers as JSON-ready dicts, and the few formats
humans read (yuan, relative durations, local times).

JSON keeps money as integer fen and times as ISO 8601 UTC (``...Z``) so scripts never parse
display strings; only the rich tables show ``¥199.00`` and "in 1d 3h".
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, tzinfo
from typing import TYPE_CHECKING, Any
from zoneinfo import ZoneInfo

from workflow.redaction import masked as masked

if TYPE_CHECKING:
    # Only named in annotations: the command line imports this module for commands that
    # never load the service (``tokens list``), see cli.main.
    from workflow.model import Case, Timer, TransitionRecord
    from workflow.orders import OrderAccount
    from workflow.orders_service import ImportResult
    from workflow.service import CaseView, FireResult, TimerRun


def iso(moment: datetime | None) -> str | None:
    if moment is None:
        return None
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


def deadline_json(timer: Timer | None) -> dict[str, Any] | None:
    if timer is None:
        return None
    return {"kind": timer.kind, "due_at": iso(timer.due_at), "trigger": timer.trigger}


def case_json(case: Case, deadline: Timer | None) -> dict[str, Any]:
    return {
        "id": case.id,
        "type": case.type.value,
        "state": case.state.value,
        "terminal": case.is_terminal,
        "version": case.version,
        "order_id": case.order_id,
        "buyer_id": case.buyer_id,
        "merchant_id": case.merchant_id,
        "category": case.category,
        "reason": case.reason,
        "description": case.description,
        "requested_amount": case.requested_amount,
        "refund_amount": case.refund_amount,
        "gift_deduction": case.gift_deduction,
        "refund_route": case.refund_route.value if case.refund_route else None,
        "refund_attempts": case.refund_attempts,
        "deadline": deadline_json(deadline),
        "items": [
            {
                "sku": item.sku,
                "quantity": item.quantity,
                "unit_price": item.unit_price,
                "amount": item.amount,
            }
            for item in case.items
        ],
        "gifts": [
            {"sku": gift.sku, "quantity": gift.quantity, "value": gift.value} for gift in case.gifts
        ],
        "payment": {
            "channel": case.payment.channel,
            "amount": case.payment.amount,
            "paid_at": iso(case.payment.paid_at),
        },
        "delivered_at": iso(case.delivered_at),
        "created_at": iso(case.created_at),
        "updated_at": iso(case.updated_at),
        "details": masked(case.details),
    }


def view_json(view: CaseView) -> dict[str, Any]:
    return case_json(view.case, view.deadline)


def record_json(record: TransitionRecord) -> dict[str, Any]:
    return {
        "seq": record.seq,
        "trigger": record.trigger,
        "from_state": record.from_state.value if record.from_state else None,
        "to_state": record.to_state.value,
        "actor": record.actor,
        "source": record.source,
        "reason": record.reason,
        "at": iso(record.at),
        # The engine already masks what it logs; masking again keeps older rows safe too.
        "data": masked(record.data),
    }


def fire_json(result: FireResult) -> dict[str, Any]:
    return {
        "case": case_json(result.case, result.deadline),
        "transitions": [record_json(record) for record in result.records],
        "replayed": result.replayed,
    }


def order_account_json(account: OrderAccount) -> dict[str, Any]:
    """An order of record and its account (``orders show --json``, ``GET /orders/{id}``)."""
    order = account.order
    return {
        "order_id": order.order_id,
        "buyer_id": order.buyer_id,
        "merchant_id": order.merchant_id,
        "payment": {
            "channel": order.payment.channel,
            "amount": order.payment.amount,
            "paid_at": iso(order.payment.paid_at),
        },
        "delivered_at": iso(order.delivered_at),
        "migrated": order.migrated,
        "paid": account.paid,
        "refunded": account.refunded,
        "pending": account.pending,
        "refundable": account.refundable,
        "lines": [
            {
                "sku": line.sku,
                "category": line.category,
                "unit_price": line.unit_price,
                "quantity": line.quantity,
                "open_quantity": line.open_quantity,
                "refunded_quantity": line.refunded_quantity,
                "refunded_amount": line.refunded_amount,
            }
            for line in account.lines
        ],
        "gifts": [
            {"sku": gift.sku, "quantity": gift.quantity, "value": gift.value}
            for gift in order.gifts
        ],
    }


def import_json(result: ImportResult) -> dict[str, Any]:
    """An import's counts, and each refused order by its position (from 1) in the batch."""
    return {
        "imported": result.imported,
        "updated": result.updated,
        "refused": [
            {"index": refusal.index + 1, "order_id": refusal.order_id, "reason": refusal.message}
            for refusal in result.refused
        ],
    }


def timer_json(timer: Timer, as_of: datetime) -> dict[str, Any]:
    return {
        "id": timer.id,
        "case_id": timer.case_id,
        "kind": timer.kind,
        "trigger": timer.trigger,
        "state": timer.state.value,
        "due_at": iso(timer.due_at),
        # Positive when overdue: how long the sweeper is behind for this timer.
        "late_seconds": int((as_of - timer.due_at).total_seconds()),
    }


def run_json(run: TimerRun) -> dict[str, Any]:
    return {
        "timer_id": run.timer.id,
        "case_id": run.timer.case_id,
        "kind": run.timer.kind,
        "trigger": run.timer.trigger,
        "fired": run.fired,
        "outcome": run.outcome,
    }


# -- for humans ------------------------------------------------------------------------------


def yuan(fen: int | None) -> str:
    """Integer fen as yuan: 19900 -> ``¥199.00`` (integer arithmetic, no float rounding)."""
    if fen is None:
        return "—"
    sign = "-" if fen < 0 else ""
    whole, cents = divmod(abs(fen), 100)
    return f"{sign}¥{whole:,}.{cents:02d}"


def span(delta: timedelta) -> str:
    """A duration in its two largest units: ``1d 3h``, ``2h 5m``, ``40s``."""
    seconds = int(abs(delta).total_seconds())
    days, rest = divmod(seconds, 86_400)
    hours, rest = divmod(rest, 3_600)
    minutes, secs = divmod(rest, 60)
    parts = [(days, "d"), (hours, "h"), (minutes, "m"), (secs, "s")]
    shown = [f"{value}{unit}" for value, unit in parts if value][:2]
    return " ".join(shown) or "0s"


def relative(due_at: datetime, now: datetime) -> str:
    """``in 1d 3h`` before ``due_at``, ``overdue by 2h`` after it."""
    if due_at > now:
        return f"in {span(due_at - now)}"
    if due_at == now:
        return "due now"
    return f"overdue by {span(now - due_at)}"


def local(moment: datetime | None, zone: tzinfo) -> str:
    """A time in the display zone (``AFTERSALES_DISPLAY_TZ``), with its offset."""
    if moment is None:
        return "—"
    shown = _in_zone(moment, zone)
    offset = shown.strftime("%z")
    return f"{shown:%Y-%m-%d %H:%M} {offset[:3]}:{offset[3:]}"


def local_time(moment: datetime, zone: tzinfo) -> str:
    """``local`` without the offset, for columns whose header names the zone."""
    return f"{_in_zone(moment, zone):%Y-%m-%d %H:%M}"


def _in_zone(moment: datetime, zone: tzinfo) -> datetime:
    """``moment`` in ``zone``; an instant within hours of year 1 or 9999 that the zone would
    push past what ``datetime`` holds is shown in UTC instead (its offset says so)."""
    try:
        return moment.astimezone(zone)
    except OverflowError:
        return moment.astimezone(UTC)


def zone_name(zone: tzinfo) -> str:
    """``Asia/Shanghai`` for a named zone, ``+08:00`` for a fixed offset."""
    return zone.key if isinstance(zone, ZoneInfo) else str(zone.tzname(None))
