"""The policy rules of RULES.md as pure functions of an application, a case and the time.

Each refusal names its rule and the dates it compared, in the platform's time zone.
"""

from __future__ import annotations

import calendar
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta
from zoneinfo import ZoneInfo

from config.policy import Policy
from workflow.errors import InvalidInput, PolicyRefusal
from workflow.model import Case, Gift
from workflow.payloads import Application
from workflow.states import CaseType

#: Reasons that describe a defect of the goods, covered by warranty (A.2, A.5).
DEFECT_REASONS = frozenset({"quality_issue", "not_as_described"})
#: Reasons about the delivery itself (A.6): reported within the no-reason window.
DELIVERY_REASONS = frozenset({"wrong_item", "damaged_in_transit", "missing_item"})


@dataclass(frozen=True)
class Window:
    """Calendar days ``first``..``last`` (inclusive) in the platform's zone."""

    rule: str
    first: date
    last: date
    zone: ZoneInfo

    def ends_at(self) -> datetime:
        return datetime.combine(self.last + timedelta(days=1), time(0), self.zone)

    def covers(self, moment: datetime) -> bool:
        return moment.astimezone(self.zone).date() <= self.last

    def describe(self, label: str, moment: datetime) -> str:
        applied = moment.astimezone(self.zone).date()
        return (
            f"{label} ran from {self.first} to {self.last} ({self.zone.key}); applied on {applied}"
        )


def _add_months(day: date, months: int) -> date:
    month_index = day.month - 1 + months
    year, month = day.year + month_index // 12, month_index % 12 + 1
    return date(year, month, min(day.day, calendar.monthrange(year, month)[1]))


def no_reason_window(policy: Policy, delivered_at: datetime) -> Window:
    """7 days counted from the day after delivery (B, no-reason window)."""
    zone = ZoneInfo(policy.timezone)
    delivered = delivered_at.astimezone(zone).date()
    return Window(
        "no_reason_window",
        delivered + timedelta(days=1),
        delivered + timedelta(days=policy.no_reason_days),
        zone,
    )


def warranty_window(policy: Policy, category: str, delivered_at: datetime) -> Window | None:
    """Warranty months counted from the day the goods were received (A.2, A.7)."""
    months = policy.warranty_months.get(category)
    if not months:
        return None
    zone = ZoneInfo(policy.timezone)
    delivered = delivered_at.astimezone(zone).date()
    return Window("warranty_period", delivered, _add_months(delivered, months), zone)


def check_eligibility(app: Application, category: str, policy: Policy, now: datetime) -> None:
    """Raise ``PolicyRefusal`` if the application may not be made now."""
    if app.reason not in policy.reasons:
        known = ", ".join(sorted(policy.reasons))
        raise InvalidInput(f"unknown reason {app.reason!r} (one of {known})", "reason")
    if app.delivered_at is not None and app.delivered_at > now:
        raise InvalidInput("delivered_at lies in the future", "delivered_at")
    # The service fills payment (and delivered_at) in from the order of record.
    assert app.payment is not None
    if app.payment.paid_at > now:
        raise InvalidInput("paid_at lies in the future", "payment.paid_at")
    if app.type is CaseType.REFUND_ONLY:
        _check_refund_only(app, policy, now)
        return
    if app.delivered_at is None:
        raise PolicyRefusal(
            "delivery_required",
            f"a {app.type.value} case needs the goods delivered first "
            "(delivered_at); before delivery apply for refund_only",
        )
    if app.reason == "not_received":
        raise PolicyRefusal(
            "reason_fits_type", "not_received goods cannot be sent back; apply for refund_only"
        )
    if app.type is CaseType.REPAIR:
        _check_repair(app, category, policy, now)
    elif app.reason == "no_reason":
        _check_no_reason(app, category, policy, now)
    else:
        _check_defect(app, category, policy, now)


def _check_refund_only(app: Application, policy: Policy, now: datetime) -> None:
    if app.delivered_at is None:
        if app.reason not in ("not_received", "no_reason"):
            raise PolicyRefusal(
                "reason_fits_type",
                f"{app.reason} needs delivered goods; the order is not delivered",
            )
        return
    if app.reason in ("not_received", "no_reason"):
        raise PolicyRefusal(
            "reason_fits_type",
            f"the order was delivered on {app.delivered_at.date()}: a refund "
            f"without return is for goods not received, damaged or missing",
        )
    window = no_reason_window(policy, app.delivered_at)
    if not window.covers(now):
        raise PolicyRefusal(
            window.rule,
            window.describe("the window to report goods damaged or missing on delivery", now),
        )


def _check_no_reason(app: Application, category: str, policy: Policy, now: datetime) -> None:
    assert app.delivered_at is not None
    if category in policy.no_reason_excluded:
        raise PolicyRefusal(
            "no_reason_excluded_category",
            f"category {category} has no {policy.no_reason_days}-day no-reason "
            "return (made-to-order, fresh, digital or printed goods)",
        )
    window = no_reason_window(policy, app.delivered_at)
    if not window.covers(now):
        raise PolicyRefusal(
            window.rule, window.describe(f"the {policy.no_reason_days}-day no-reason window", now)
        )


def _check_defect(app: Application, category: str, policy: Policy, now: datetime) -> None:
    assert app.delivered_at is not None
    window = no_reason_window(policy, app.delivered_at)
    warranty = warranty_window(policy, category, app.delivered_at)
    if app.reason in DEFECT_REASONS and warranty is not None and warranty.last > window.last:
        window = warranty
    if not window.covers(now):
        label = (
            "the warranty"
            if window.rule == "warranty_period"
            else f"the {policy.no_reason_days}-day window for {app.reason}"
        )
        raise PolicyRefusal(window.rule, window.describe(label, now))


def _check_repair(app: Application, category: str, policy: Policy, now: datetime) -> None:
    assert app.delivered_at is not None
    if app.reason not in DEFECT_REASONS:
        raise PolicyRefusal(
            "repair_needs_quality_issue",
            f"warranty repair is for quality problems, not {app.reason}",
        )
    warranty = warranty_window(policy, category, app.delivered_at)
    if warranty is None:
        raise PolicyRefusal("warranty_period", f"category {category} carries no warranty")
    if not warranty.covers(now):
        raise PolicyRefusal(warranty.rule, warranty.describe("the warranty", now))


def gift_deduction(gifts: list[Gift], missing: list[str]) -> int:
    """The declared value of the gifts recorded missing at inspection (B, gifts)."""
    known = {gift.sku for gift in gifts}
    unknown = sorted(set(missing) - known)
    if unknown:
        raise InvalidInput(f"not a gift of this case: {', '.join(unknown)}", "data.gifts_missing")
    return sum(gift.value * gift.quantity for gift in gifts if gift.sku in set(missing))


def refund_channel_deadline(policy: Policy, case: Case) -> datetime | None:
    days = policy.refund_channel_days.get(case.payment.channel)
    return None if days is None else case.payment.paid_at + timedelta(days=days)


def refund_channel_open(policy: Policy, case: Case, now: datetime) -> bool:
    """Refunds go back the original way while within that channel's window (A.4)."""
    deadline = refund_channel_deadline(policy, case)
    return deadline is not None and now <= deadline
