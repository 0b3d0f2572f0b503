"""The case state machines, declared as data: ``RULES`` (one row per trigger, sources, destination,
roles, case types, routing condition; the first row whose condition holds wins), ``TIMERS`` (the
deadline each state arms) and ``FOLLOW_UPS`` (a system trigger fired on entering a state).

Timers fire their triggers from ``tasks/timers.py`` (``sweep_timers_task`` calls
``CaseService.sweep_timers``, which runs ``engine.fire``), inbound events from
``workflow/events/mapping.py`` (``EVENT_RULES``, applied by ``EventService.ingest``), people through
``CaseService.fire``; docs/triggers.md lists each trigger's rows, guard, timer and firing code.
"""

from __future__ import annotations

from dataclasses import dataclass

from workflow.states import TERMINAL_STATES, CaseState, CaseType, Role

ALL_TYPES: frozenset[CaseType] = frozenset(CaseType)
RETURN_LEG: frozenset[CaseType] = frozenset(
    {CaseType.RETURN_REFUND, CaseType.EXCHANGE, CaseType.REPAIR}
)
OPEN_STATES: tuple[CaseState, ...] = tuple(s for s in CaseState if s not in TERMINAL_STATES)

BUYER = frozenset({Role.BUYER})
MERCHANT = frozenset({Role.MERCHANT})
ADMIN = frozenset({Role.ADMIN})
SYSTEM = frozenset({Role.SYSTEM})
CARRIER = frozenset({Role.CARRIER})
PAYMENT = frozenset({Role.PAYMENT})


@dataclass(frozen=True)
class Rule:
    trigger: str
    sources: tuple[CaseState, ...]
    dest: CaseState
    actors: frozenset[Role]
    types: frozenset[CaseType] = ALL_TYPES
    #: Name of a routing condition in ``engine.CONDITIONS``; the row applies only when it holds.
    when: str | None = None


def _rule(
    trigger: str,
    sources: CaseState | tuple[CaseState, ...],
    dest: CaseState,
    actors: frozenset[Role],
    types: frozenset[CaseType] = ALL_TYPES,
    when: str | None = None,
) -> Rule:
    return Rule(
        trigger, sources if isinstance(sources, tuple) else (sources,), dest, actors, types, when
    )


def _refund_routes(
    trigger: str,
    sources: CaseState | tuple[CaseState, ...],
    actors: frozenset[Role],
    types: frozenset[CaseType] = ALL_TYPES,
) -> list[Rule]:
    """Refund to the original channel while its window is open, else wait for a bank account."""
    return [
        _rule(trigger, sources, CaseState.REFUNDING, actors, types, when="refund_channel_open"),
        _rule(trigger, sources, CaseState.AWAITING_BANK_ACCOUNT, actors, types),
    ]


_EXCHANGE = frozenset({CaseType.EXCHANGE})
_REFUND_ONLY = frozenset({CaseType.REFUND_ONLY})
_REPAIR = frozenset({CaseType.REPAIR})
_OUTBOUND = frozenset({CaseType.EXCHANGE, CaseType.REPAIR})
_STALLABLE = (
    CaseState.SHIPPED_BACK,
    CaseState.SHIPPED_TO_BUYER,
    CaseState.INSPECTED,
    CaseState.AWAITING_BANK_ACCOUNT,
)
_CANCELLABLE = (
    CaseState.SUBMITTED,
    CaseState.APPROVED,
    CaseState.PICKUP,
    CaseState.REJECTED,
    CaseState.DISPUTED,
)
_ADMIN_REFUNDABLE = tuple(
    s for s in OPEN_STATES if s not in (CaseState.REFUNDING, CaseState.AWAITING_BANK_ACCOUNT)
)

RULES: tuple[Rule, ...] = (
    # Review (A.1 step 3; B: 48 h then auto-approve).
    _rule("approve", CaseState.SUBMITTED, CaseState.APPROVED, MERCHANT),
    # A refund_only on delivered goods needs the merchant's consent (RULES.md C): its review
    # deadline escalates to the platform instead (merchant_consent in TIMERS); should an
    # auto-approval fire on it anyway, it is routed to the platform too, never to the refund.
    _rule(
        "auto_approve",
        CaseState.SUBMITTED,
        CaseState.DISPUTED,
        SYSTEM,
        _REFUND_ONLY,
        when="merchant_consent_required",
    ),
    _rule("auto_approve", CaseState.SUBMITTED, CaseState.APPROVED, SYSTEM),
    _rule("reject", CaseState.SUBMITTED, CaseState.REJECTED, MERCHANT),
    _rule("cancel", _CANCELLABLE, CaseState.CANCELLED, BUYER),
    # After a rejection: revise and re-apply, ask the platform to intervene, or let it close.
    _rule("revise", CaseState.REJECTED, CaseState.SUBMITTED, BUYER),
    _rule("escalate", CaseState.REJECTED, CaseState.DISPUTED, BUYER),
    _rule("expire_dispute_window", CaseState.REJECTED, CaseState.CLOSED, SYSTEM),
    # Return leg (A.1 steps 3-5).
    _rule("book_pickup", CaseState.APPROVED, CaseState.PICKUP, SYSTEM, RETURN_LEG),
    _rule(
        "ship_back",
        (CaseState.APPROVED, CaseState.PICKUP),
        CaseState.SHIPPED_BACK,
        BUYER,
        RETURN_LEG,
    ),
    _rule(
        "record_pickup",
        (CaseState.APPROVED, CaseState.PICKUP),
        CaseState.SHIPPED_BACK,
        CARRIER,
        RETURN_LEG,
    ),
    _rule(
        "expire_return",
        (CaseState.APPROVED, CaseState.PICKUP),
        CaseState.CLOSED,
        SYSTEM,
        RETURN_LEG,
    ),
    _rule(
        "record_return_delivery",
        CaseState.SHIPPED_BACK,
        CaseState.RETURN_DELIVERED,
        CARRIER,
        RETURN_LEG,
    ),
    _rule(
        "confirm_receipt",
        (CaseState.SHIPPED_BACK, CaseState.RETURN_DELIVERED),
        CaseState.RECEIVED,
        MERCHANT,
        RETURN_LEG,
    ),
    # B: after the receipt timeout the merchant has had the goods 10 days: received and the
    # inspection deemed passed in one step, so a return proceeds to the refund at once (no second
    # 48 h wait); an exchange or repair goes on to its replacement or repair.
    _rule("auto_receive", CaseState.RETURN_DELIVERED, CaseState.INSPECTED, SYSTEM, RETURN_LEG),
    _rule("inspect", CaseState.RECEIVED, CaseState.INSPECTED, MERCHANT, RETURN_LEG),
    _rule("deem_inspected", CaseState.RECEIVED, CaseState.INSPECTED, SYSTEM, RETURN_LEG),
    _rule("fail_inspection", CaseState.RECEIVED, CaseState.REJECTED, MERCHANT, RETURN_LEG),
    # Outcomes: refund, replacement (A.1 step 5), repair (A.5).
    *_refund_routes("start_refund", CaseState.APPROVED, SYSTEM, _REFUND_ONLY),
    *_refund_routes(
        "start_refund", CaseState.INSPECTED, SYSTEM, frozenset({CaseType.RETURN_REFUND})
    ),
    *_refund_routes("convert_to_refund", CaseState.INSPECTED, MERCHANT | SYSTEM, _OUTBOUND),
    _rule("ship_replacement", CaseState.INSPECTED, CaseState.SHIPPED_TO_BUYER, MERCHANT, _EXCHANGE),
    _rule("ship_repaired", CaseState.INSPECTED, CaseState.SHIPPED_TO_BUYER, MERCHANT, _REPAIR),
    _rule(
        "record_buyer_delivery",
        CaseState.SHIPPED_TO_BUYER,
        CaseState.DELIVERED_TO_BUYER,
        CARRIER,
        _OUTBOUND,
    ),
    _rule(
        "confirm_delivery",
        (CaseState.SHIPPED_TO_BUYER, CaseState.DELIVERED_TO_BUYER),
        CaseState.EXCHANGED,
        BUYER,
        _EXCHANGE,
    ),
    _rule(
        "confirm_delivery",
        (CaseState.SHIPPED_TO_BUYER, CaseState.DELIVERED_TO_BUYER),
        CaseState.REPAIRED,
        BUYER,
        _REPAIR,
    ),
    _rule(
        "auto_confirm_delivery",
        CaseState.DELIVERED_TO_BUYER,
        CaseState.EXCHANGED,
        SYSTEM,
        _EXCHANGE,
    ),
    _rule(
        "auto_confirm_delivery", CaseState.DELIVERED_TO_BUYER, CaseState.REPAIRED, SYSTEM, _REPAIR
    ),
    # Refund execution (A.4; B: refunds execute once).
    _rule("confirm_refund", CaseState.REFUNDING, CaseState.REFUNDED, PAYMENT),
    _rule("fail_refund", CaseState.REFUNDING, CaseState.REFUND_FAILED, PAYMENT),
    _rule("retry_refund", CaseState.REFUND_FAILED, CaseState.REFUNDING, SYSTEM | ADMIN),
    _rule(
        "switch_to_bank_transfer", CaseState.REFUND_FAILED, CaseState.AWAITING_BANK_ACCOUNT, ADMIN
    ),
    _rule("provide_bank_account", CaseState.AWAITING_BANK_ACCOUNT, CaseState.REFUNDING, BUYER),
    _rule(
        "remind_bank_account",
        CaseState.AWAITING_BANK_ACCOUNT,
        CaseState.AWAITING_BANK_ACCOUNT,
        SYSTEM,
    ),
    # Logistics problems (A.6): the carrier answers for the parcel; the platform steps in.
    _rule(
        "report_parcel_lost",
        (CaseState.SHIPPED_BACK, CaseState.SHIPPED_TO_BUYER),
        CaseState.DISPUTED,
        CARRIER,
        RETURN_LEG,
    ),
    _rule(
        "report_parcel_damaged",
        (CaseState.SHIPPED_BACK, CaseState.SHIPPED_TO_BUYER),
        CaseState.DISPUTED,
        CARRIER,
        RETURN_LEG,
    ),
    # Stalled deadlines escalate to the platform rather than waiting unseen.
    _rule("escalate", _STALLABLE, CaseState.DISPUTED, SYSTEM),
    # ... and so does a refund_only on delivered goods the merchant neither approved nor rejected.
    _rule("escalate", CaseState.SUBMITTED, CaseState.DISPUTED, SYSTEM, _REFUND_ONLY),
    # Platform rulings and corrective admin transitions (each with a mandatory reason).
    _rule(
        "rule_for_buyer",
        CaseState.DISPUTED,
        CaseState.INSPECTED,
        ADMIN,
        RETURN_LEG,
        when="goods_back",
    ),
    _rule("rule_for_buyer", CaseState.DISPUTED, CaseState.APPROVED, ADMIN),
    _rule("rule_for_merchant", CaseState.DISPUTED, CaseState.CLOSED, ADMIN),
    _rule(
        "escalate",
        tuple(s for s in OPEN_STATES if s != CaseState.DISPUTED),
        CaseState.DISPUTED,
        ADMIN,
    ),
    _rule("force_close", OPEN_STATES, CaseState.CLOSED, ADMIN),
    *_refund_routes("force_refund", _ADMIN_REFUNDABLE, ADMIN),
)

#: Triggers that need a reason whoever fires them (admins always give one).
REASON_REQUIRED: frozenset[str] = frozenset({"reject", "fail_inspection"})
#: The corrective transitions an admin may force on top of the ordinary rulings.
ADMIN_FORCED: frozenset[str] = frozenset({"escalate", "force_close", "force_refund"})

TRIGGERS: tuple[str, ...] = tuple(dict.fromkeys(rule.trigger for rule in RULES))


@dataclass(frozen=True)
class TimerSpec:
    """The deadline a state arms: after the policy's ``kind`` delay, ``trigger`` fires as system."""

    kind: str
    trigger: str
    types: frozenset[CaseType] = ALL_TYPES
    #: A flag in ``case.details`` that must be set (True) or unset (False) for this spec to apply.
    flag: tuple[str, bool] | None = None
    #: The party being waited for. Once the deadline has passed, that party can no longer take a
    #: way out other than the timeout's; None for reminders and our own escalation conventions.
    binds: Role | None = None


#: The deadline each state arms (``engine.timer_for``, on entering it); when it is due,
#: ``tasks/timers.py`` ``sweep_timers_task`` fires its trigger (``CaseService.sweep_timers``).
TIMERS: dict[CaseState, tuple[TimerSpec, ...]] = {
    CaseState.SUBMITTED: (
        TimerSpec(
            "merchant_review",
            "auto_approve",
            flag=("merchant_consent_required", False),
            binds=Role.MERCHANT,
        ),
        # RULES.md C: a refund_only on delivered goods is refunded only with the merchant's
        # consent, so silence cannot approve it. Rejecting it would punish the buyer for the
        # merchant's silence (A.6: the buyer "agrees a solution with the merchant"; A.8: the
        # platform's customer service steps in), so the deadline puts it before the platform,
        # whose ruling for the buyer stands in for the consent. The merchant may still approve
        # or reject until the sweep (the deadline binds no one).
        TimerSpec(
            "merchant_consent", "escalate", _REFUND_ONLY, flag=("merchant_consent_required", True)
        ),
    ),
    # One deadline from approval to shipping, carried across the pickup booking.
    CaseState.APPROVED: (
        TimerSpec("return_shipment", "expire_return", RETURN_LEG, binds=Role.BUYER),
    ),
    CaseState.PICKUP: (
        TimerSpec("return_shipment", "expire_return", RETURN_LEG, binds=Role.BUYER),
    ),
    CaseState.SHIPPED_BACK: (TimerSpec("return_transit", "escalate"),),
    CaseState.RETURN_DELIVERED: (
        TimerSpec("merchant_receipt", "auto_receive", binds=Role.MERCHANT),
    ),
    CaseState.RECEIVED: (TimerSpec("merchant_inspection", "deem_inspected", binds=Role.MERCHANT),),
    CaseState.INSPECTED: (
        TimerSpec("replacement_shipment", "convert_to_refund", _EXCHANGE, binds=Role.MERCHANT),
        TimerSpec("repair_completion", "escalate", _REPAIR),
    ),
    CaseState.SHIPPED_TO_BUYER: (TimerSpec("outbound_transit", "escalate"),),
    CaseState.DELIVERED_TO_BUYER: (
        TimerSpec("buyer_confirmation", "auto_confirm_delivery", binds=Role.BUYER),
    ),
    CaseState.REJECTED: (TimerSpec("dispute_window", "expire_dispute_window", binds=Role.BUYER),),
    CaseState.AWAITING_BANK_ACCOUNT: (
        TimerSpec(
            "bank_account_reminder", "remind_bank_account", flag=("bank_account_reminded", False)
        ),
        TimerSpec("bank_account_escalation", "escalate", flag=("bank_account_reminded", True)),
    ),
    # Its delay comes from the refund retry backoff, not a fixed timer value.
    CaseState.REFUND_FAILED: (
        TimerSpec("refund_retry", "retry_refund", flag=("refund_parked", False)),
    ),
}

TIMER_SPECS: dict[str, TimerSpec] = {spec.kind: spec for specs in TIMERS.values() for spec in specs}

#: On entering (type, state), this system trigger fires at once in the same transaction
#: (``engine.fire``).
FOLLOW_UPS: dict[tuple[CaseType, CaseState], str] = {
    (CaseType.REFUND_ONLY, CaseState.APPROVED): "start_refund",
    (CaseType.RETURN_REFUND, CaseState.INSPECTED): "start_refund",
}


def states_for(case_type: CaseType) -> list[CaseState]:
    """The states a case of this type can reach from ``submitted``, in declaration order."""
    reachable = {CaseState.SUBMITTED}
    frontier = [CaseState.SUBMITTED]
    typed = [rule for rule in RULES if case_type in rule.types]
    while frontier:
        state = frontier.pop()
        for rule in typed:
            if state in rule.sources and rule.dest not in reachable:
                reachable.add(rule.dest)
                frontier.append(rule.dest)
    return [s for s in CaseState if s in reachable]


def _build_rules_for(case_type: CaseType) -> list[Rule]:
    reachable = set(states_for(case_type))
    typed = []
    for rule in RULES:
        sources = tuple(s for s in rule.sources if s in reachable)
        if case_type in rule.types and sources:
            typed.append(Rule(rule.trigger, sources, rule.dest, rule.actors, rule.types, rule.when))
    return typed


_RULES_BY_TYPE = {case_type: _build_rules_for(case_type) for case_type in CaseType}


def rules_for(case_type: CaseType) -> list[Rule]:
    """The rows that apply to a case type, with sources it can never be in left out."""
    return _RULES_BY_TYPE[case_type]
