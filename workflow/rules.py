"""The policy rules of RULES.md as pure functions of explicit facts, a case and the time.

Each refusal names its rule and the dates it compared, in the platform's time zone.
"""

from __future__ import annotations

import calendar
from dataclasses import dataclass, replace
from datetime import date, datetime, time, timedelta
from zoneinfo import ZoneInfo

from config.policy import Policy
from workflow.errors import InvalidInput, Phrase, PolicyRefusal
from workflow.model import Case, Gift
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


@dataclass(frozen=True)
class EligibilityFacts:
    """What the eligibility rules look at: the application's choice (type, reason) and the facts
    of the order line it names, as the service read them (RULES.md C: from the order of record,
    never from the buyer's word)."""

    case_type: CaseType
    reason: str
    #: The order line's category (one the policy knows: checked at import).
    category: str
    paid_at: datetime
    #: When the goods were received (签收); None while they are not.
    delivered_at: datetime | None
    #: False while the merchant has not shipped the order.
    shipped: bool = True
    #: The carrier reported the outbound parcel lost in transit.
    lost_in_transit: bool = False


def quality_window(policy: Policy, facts: EligibilityFacts) -> Window:
    """C, quality problems: refund within ``quality_refund_days``, exchange within
    ``quality_exchange_days`` of delivery (the category's own if configured), counted like the
    no-reason window from the day after delivery."""
    assert facts.delivered_at is not None
    zone = ZoneInfo(policy.timezone)
    delivered = facts.delivered_at.astimezone(zone).date()
    if facts.case_type is CaseType.EXCHANGE:
        rule, days = "quality_exchange_window", policy.quality_exchange_days_for(facts.category)
    else:
        rule, days = "quality_refund_window", policy.quality_refund_days_for(facts.category)
    return Window(rule, delivered + timedelta(days=1), delivered + timedelta(days=days), zone)


def merchant_consent_required(facts: EligibilityFacts) -> bool:
    """C, refund-only: for delivered goods only with the merchant's consent, so the review
    timer may not approve it (it escalates to the platform instead, see ``definitions.TIMERS``).
    Goods not shipped, not received or lost in transit need no consent."""
    return facts.case_type is CaseType.REFUND_ONLY and facts.delivered_at is not None


def refund_at_once(facts: EligibilityFacts) -> bool:
    """C, refund-only: an order the merchant has not shipped is refunded at once."""
    return (
        facts.case_type is CaseType.REFUND_ONLY and not facts.shipped and facts.delivered_at is None
    )


def check_eligibility(facts: EligibilityFacts, policy: Policy, now: datetime) -> None:
    """Raise ``PolicyRefusal`` if the application may not be made now."""
    if facts.reason not in policy.reasons:
        known = ", ".join(sorted(policy.reasons))
        raise InvalidInput(f"unknown reason {facts.reason!r} (one of {known})", "reason")
    if facts.delivered_at is not None and facts.delivered_at > now:
        raise InvalidInput("delivered_at lies in the future", "delivered_at")
    if facts.paid_at > now:
        raise InvalidInput("paid_at lies in the future", "payment.paid_at")
    if facts.case_type is CaseType.REFUND_ONLY:
        _check_refund_only(facts, policy, now)
        return
    if facts.delivered_at is None:
        raise PolicyRefusal(
            "delivery_required",
            f"a {facts.case_type.value} case needs the goods delivered first "
            "(delivered_at); before delivery apply for refund_only",
        )
    if facts.reason == "not_received":
        raise PolicyRefusal(
            "reason_fits_type", "not_received goods cannot be sent back; apply for refund_only"
        )
    if facts.case_type is CaseType.REPAIR:
        _check_repair(facts, policy, now)
    elif facts.reason == "no_reason":
        _check_no_reason(facts, policy, now)
    elif facts.reason in DEFECT_REASONS:
        _check_quality(facts, policy, now)
    else:
        _check_delivery_problem(facts, policy, now)


def _check_refund_only(facts: EligibilityFacts, policy: Policy, now: datetime) -> None:
    if facts.delivered_at is None:
        # Not shipped, shipped but not received, or lost in transit: no goods to send back.
        if facts.reason not in ("not_received", "no_reason"):
            raise PolicyRefusal(
                "reason_fits_type",
                f"{facts.reason} needs delivered goods; the order is not delivered",
            )
        return
    if facts.reason in ("not_received", "no_reason"):
        raise PolicyRefusal(
            "reason_fits_type",
            Phrase(
                "the order was delivered at ",
                facts.delivered_at,
                ": a refund without return is for goods not received, damaged or missing",
            ),
        )
    # Delivered goods: the application is allowed, the refund needs the merchant's consent
    # (``merchant_consent_required``).
    window = no_reason_window(policy, facts.delivered_at)
    if not window.covers(now):
        raise PolicyRefusal(
            window.rule,
            window.describe("the window to report goods damaged or missing on delivery", now),
        )


def _check_no_reason(facts: EligibilityFacts, policy: Policy, now: datetime) -> None:
    assert facts.delivered_at is not None
    if facts.category in policy.no_reason_excluded:
        raise PolicyRefusal(
            "no_reason_excluded_category",
            f"category {facts.category} has no {policy.no_reason_days}-day no-reason "
            "return (made-to-order, fresh, digital or printed goods)",
        )
    window = no_reason_window(policy, facts.delivered_at)
    if not window.covers(now):
        raise PolicyRefusal(
            window.rule, window.describe(f"the {policy.no_reason_days}-day no-reason window", now)
        )


def _check_delivery_problem(facts: EligibilityFacts, policy: Policy, now: datetime) -> None:
    """A.6: wrong, damaged or missing goods are reported within the no-reason window."""
    assert facts.delivered_at is not None
    window = no_reason_window(policy, facts.delivered_at)
    if not window.covers(now):
        label = f"the {policy.no_reason_days}-day window for {facts.reason}"
        raise PolicyRefusal(window.rule, window.describe(label, now))


def _check_quality(facts: EligibilityFacts, policy: Policy, now: datetime) -> None:
    """C: a quality problem is refunded within 7 days, exchanged within 15, then repaired."""
    assert facts.delivered_at is not None
    window = quality_window(policy, facts)
    if window.covers(now):
        return
    days = (window.last - window.first).days + 1
    what = "refund" if window.rule == "quality_refund_window" else "exchange"
    message = window.describe(f"the {days}-day {what} window for a quality problem", now)
    later = [
        quality_window(policy, replace(facts, case_type=CaseType.EXCHANGE))
        if what == "refund"
        else None,
        warranty_window(policy, facts.category, facts.delivered_at),
    ]
    for option in later:
        if option is not None and option.covers(now):
            kind = "exchange" if option.rule == "quality_exchange_window" else "repair"
            message += f"; apply for {kind} (open until {option.last})"
            break
    raise PolicyRefusal(window.rule, message)


def _check_repair(facts: EligibilityFacts, policy: Policy, now: datetime) -> None:
    assert facts.delivered_at is not None
    if facts.reason not in DEFECT_REASONS:
        raise PolicyRefusal(
            "repair_needs_quality_issue",
            f"warranty repair is for quality problems, not {facts.reason}",
        )
    warranty = warranty_window(policy, facts.category, facts.delivered_at)
    if warranty is None:
        raise PolicyRefusal("warranty_period", f"category {facts.category} carries no warranty")
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
