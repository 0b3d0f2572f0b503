"""Runs triggers on cases with the shared state machines; pure, no storage.

One ``transitions.Machine`` per case type, built from ``definitions.RULES`` on first use, serves
every case of the process. For one trigger a case is bound to it through a small ``_Binding`` and
fired with ``Event.trigger(binding)`` (what ``model.trigger(name)`` calls); nothing stays bound.
``Machine.add_model``/``remove_model`` around each trigger would set some 75 methods on the
binding every time: 144 µs a trigger against 13 µs (transitions 0.9.3, this machine).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from functools import cache
from typing import Any, cast

from pydantic import BaseModel
from transitions import EventData, Machine

from config.policy import Policy
from workflow import definitions, payloads, rules
from workflow.definitions import FOLLOW_UPS, REASON_REQUIRED, TIMERS, Rule
from workflow.errors import (
    Forbidden,
    InvalidInput,
    NotAllowed,
    Phrase,
    PolicyRefusal,
    StateConflict,
)
from workflow.model import (
    SYSTEM,
    Actor,
    Case,
    OutboxMessage,
    RefundRoute,
    Timer,
    TransitionRecord,
)
from workflow.redaction import mask
from workflow.states import CaseState, CaseType, Role


@dataclass
class _Binding:
    """A case bound to a shared machine for one trigger; ``state`` is what the machine moves."""

    case: Case
    context: Context
    state: str


@dataclass(frozen=True)
class Context:
    policy: Policy
    now: datetime
    actor: Actor
    #: The case's pending deadline when the trigger fired, if any.
    deadline: Timer | None = None
    #: The channel the trigger came through, for the log (``TransitionRecord.source``).
    source: str | None = None


def _refund_channel_open(event: EventData) -> bool:
    binding = cast(_Binding, event.model)
    case = binding.case
    if case.refund_route is RefundRoute.BANK_TRANSFER and "bank_account" in case.details:
        return True
    return rules.refund_channel_open(binding.context.policy, case, binding.context.now)


def _goods_back(event: EventData) -> bool:
    binding = cast(_Binding, event.model)
    return bool(binding.case.details.get("goods_back"))


def _merchant_consent_required(event: EventData) -> bool:
    case = cast(_Binding, event.model).case
    recorded = case.details.get("merchant_consent_required")
    if recorded is None:
        # A case submitted before the rule recorded it: judged by its own snapshot.
        return case.type is CaseType.REFUND_ONLY and case.delivered_at is not None
    return bool(recorded)


#: Routing conditions named by ``Rule.when``.
CONDITIONS: dict[str, Callable[[EventData], bool]] = {
    "refund_channel_open": _refund_channel_open,
    "goods_back": _goods_back,
    "merchant_consent_required": _merchant_consent_required,
}


@cache
def machine_for(case_type: CaseType) -> Machine:
    """The shared machine of a case type, built once per process."""
    transitions = [
        {
            "trigger": rule.trigger,
            "source": [s.value for s in rule.sources],
            "dest": rule.dest.value,
            "conditions": [CONDITIONS[rule.when]] if rule.when else [],
        }
        for rule in definitions.rules_for(case_type)
    ]
    return Machine(
        model=None,
        states=[s.value for s in definitions.states_for(case_type)],
        initial=None,
        transitions=transitions,
        auto_transitions=False,
        send_event=True,
        name=case_type.value,
    )


def rules_matching(case: Case, trigger: str, role: Role) -> list[Rule]:
    return list(_rules_matching(case.type, trigger, case.state, role))


#: ``definitions.TRIGGERS`` as a set: asked on every trigger.
_TRIGGERS = frozenset(definitions.TRIGGERS)


@cache
def _rules_matching(
    case_type: CaseType, trigger: str, state: CaseState, role: Role
) -> tuple[Rule, ...]:
    # The table is fixed for the process, and every transition asks (twice with a deadline).
    return tuple(
        rule
        for rule in definitions.rules_for(case_type)
        if rule.trigger == trigger and state in rule.sources and role in rule.actors
    )


def check_owner(case: Case, actor: Actor) -> None:
    """A buyer acts only on its own cases, a merchant only on its own."""
    if actor.role is Role.BUYER and actor.id != case.buyer_id:
        raise Forbidden(f"case {case.id} belongs to another buyer")
    if actor.role is Role.MERCHANT and actor.id != case.merchant_id:
        raise Forbidden(f"case {case.id} belongs to another merchant")


def allowed_triggers(case: Case, actor: Actor) -> list[str]:
    """Triggers this actor may fire on the case now, in table order."""
    if case.is_terminal:
        return []
    found = [
        rule.trigger
        for rule in definitions.rules_for(case.type)
        if case.state in rule.sources and actor.role in rule.actors
    ]
    return list(dict.fromkeys(found))


def _check_deadline(case: Case, trigger: str, context: Context) -> None:
    """Once a deadline has passed, the party it waited for can no longer take another way out.

    The timer may fire a little late; in between, an action that leads where the timeout leads
    (a late ``approve``) is still fine, one that leads elsewhere (shipping after the return window
    closed, rejecting after the review deadline) is refused naming the deadline. Other parties
    are not bound by it: a buyer may still cancel once the merchant's review time is up.
    """
    deadline = context.deadline
    if deadline is None or context.now < deadline.due_at or deadline.trigger == trigger:
        return
    spec = definitions.TIMER_SPECS.get(deadline.kind)
    if spec is None or spec.binds is not context.actor.role:
        return
    timeout_dests = {
        r.dest
        for r in definitions.rules_for(case.type)
        if r.trigger == deadline.trigger and case.state in r.sources
    }
    wanted_dests = {r.dest for r in rules_matching(case, trigger, context.actor.role)}
    if wanted_dests <= timeout_dests:
        return
    raise PolicyRefusal(
        deadline.kind,
        Phrase(
            f"the {deadline.kind.replace('_', ' ')} deadline passed at ",
            deadline.due_at,
            f"; {deadline.trigger} applies now",
        ),
    )


@dataclass
class Outcome:
    records: list[TransitionRecord] = field(default_factory=list)
    messages: list[OutboxMessage] = field(default_factory=list)


def fire(
    case: Case,
    trigger: str,
    context: Context,
    data: dict[str, Any] | None = None,
    reason: str | None = None,
    idempotency_key: str | None = None,
) -> Outcome:
    """Move the case by ``trigger`` (and any follow-ups), mutating it; raises typed errors.

    The case's version rises by one per record; the caller stores it with compare-and-set.
    """
    actor = context.actor
    if trigger not in _TRIGGERS:
        raise InvalidInput(f"unknown trigger {trigger!r}", "trigger")
    check_owner(case, actor)
    if not _rules_matching(case.type, trigger, case.state, actor.role):
        raise NotAllowed(
            f"{trigger} is not allowed for {actor.role.value} on a {case.type.value} case "
            f"in state {case.state.value}",
            allowed_triggers(case, actor),
        )
    reason = (reason or "").strip() or None
    if reason is None and (actor.role is Role.ADMIN or trigger in REASON_REQUIRED):
        who = "an admin" if actor.role is Role.ADMIN else trigger
        raise InvalidInput(f"{who} needs a reason", "reason")
    parsed = _trigger_data(trigger, data)
    _check_deadline(case, trigger, context)

    outcome = Outcome()
    _step(case, trigger, context, parsed, reason, idempotency_key, outcome)
    follow_up = FOLLOW_UPS.get((case.type, case.state))
    while follow_up is not None:
        system_context = Context(context.policy, context.now, SYSTEM)
        _step(case, follow_up, system_context, payloads.NoData(), None, idempotency_key, outcome)
        follow_up = FOLLOW_UPS.get((case.type, case.state))
    return outcome


#: The parsed data of triggers whose schema has no fields (most of them, timers included): every
#: call without data gets an equal instance, so one per trigger is parsed and shared. Nothing
#: mutates trigger data (``_apply_data`` and ``_loggable`` only read it).
_NO_DATA: dict[str, BaseModel] = {}


def _trigger_data(trigger: str, data: dict[str, Any] | None) -> BaseModel:
    if data:
        return payloads.parse_trigger_data(trigger, data)
    parsed = _NO_DATA.get(trigger)
    if parsed is None:
        parsed = payloads.parse_trigger_data(trigger, data)
        if not type(parsed).model_fields:
            _NO_DATA[trigger] = parsed
    return parsed


def _step(
    case: Case,
    trigger: str,
    context: Context,
    data: BaseModel,
    reason: str | None,
    idempotency_key: str | None,
    outcome: Outcome,
) -> None:
    source = case.state
    _apply_data(case, trigger, data, context)
    binding = _Binding(case, context, str(source))
    if not _move(binding, trigger):
        # Every trigger has an unconditional last row, so this means the tables are inconsistent.
        raise RuntimeError(f"{trigger} matched no transition from {source.value}")
    case.state = _STATES[binding.state]
    case.version += 1
    case.updated_at = context.now
    _on_enter(case, trigger, context)
    record = TransitionRecord(
        case_id=case.id or 0,
        seq=case.version,
        trigger=trigger,
        from_state=source,
        to_state=case.state,
        actor=str(context.actor),
        at=context.now,
        reason=reason,
        data=_loggable(data),
        idempotency_key=idempotency_key,
        source=context.source,
    )
    outcome.records.append(record)
    outcome.messages.extend(messages_for(case, record))


_STATES: dict[str, CaseState] = {state.value: state for state in CaseState}


def _move(binding: _Binding, trigger: str) -> bool:
    """Fire ``trigger`` on ``binding`` through its case type's shared machine: the first of the
    trigger's transitions from the binding's state whose conditions hold moves ``binding.state``.
    Raises ``MachineError`` when the trigger has no transition from that state."""
    return bool(machine_for(binding.case.type).events[trigger].trigger(binding))


def _loggable(data: BaseModel) -> dict[str, Any]:
    if not type(data).model_fields:
        return {}
    logged = data.model_dump(mode="json", exclude_none=True, exclude_defaults=True)
    if "account_no" in logged:
        logged["account_no"] = mask(logged["account_no"])
    return logged


def _apply_data(case: Case, trigger: str, data: BaseModel, context: Context) -> None:
    """Record what the trigger tells us about the case before the machine moves it."""
    details = case.details
    match data:
        case payloads.Tracking() if trigger == "ship_back":
            details["return_tracking_no"] = data.tracking_no
        case payloads.Tracking():
            details["outbound_tracking_no"] = data.tracking_no
        case payloads.PickupBooked():
            details["pickup"] = data.model_dump(mode="json")
        case payloads.CarrierEvent() if data.tracking_no and trigger == "record_pickup":
            details.setdefault("return_tracking_no", data.tracking_no)
        case payloads.Inspection():
            case.gift_deduction = rules.gift_deduction(case.gifts, data.gifts_missing)
            details["inspection"] = data.model_dump(mode="json", exclude={"received"})
            _record_received(case, data)
        case payloads.Receipt():
            _record_received(case, data)
        case payloads.BankAccount():
            details["bank_account"] = data.model_dump(mode="json")
            case.refund_route = RefundRoute.BANK_TRANSFER
        case payloads.RefundResult() if trigger == "fail_refund":
            details["last_refund_error"] = data.error or "no reason given"
            details["refund_outcome_unknown"] = not data.definite
        case payloads.RefundResult():
            details["refund_reference"] = data.reference
        case payloads.Revision():
            if data.description is not None:
                case.description = data.description
            if data.requested_amount is not None:
                _revise_amount(case, data.requested_amount)
    if trigger in ("deem_inspected", "auto_receive"):
        details["inspection"] = {"deemed_passed_at": context.now.isoformat()}
    if trigger == "remind_bank_account":
        details["bank_account_reminded"] = True
    if trigger in ("report_parcel_lost", "report_parcel_damaged"):
        details["parcel_incident"] = trigger.removeprefix("report_parcel_")
        if case.state is CaseState.SHIPPED_BACK:
            # The goods left the buyer's hands: a ruling for the buyer resumes after the return leg.
            details["goods_back"] = True


def _record_received(case: Case, data: payloads.Receipt) -> None:
    """The units per line that came back (``details['received']``): the refund follows them."""
    if data.received is None:
        return
    announced = {item.sku: item.quantity for item in case.items}
    received: dict[str, int] = {sku: 0 for sku in announced}
    for index, entry in enumerate(data.received):
        if entry.sku not in announced:
            raise InvalidInput(
                f"not an item of this case: {entry.sku}", f"data.received.{index}.sku"
            )
        if entry.quantity > announced[entry.sku]:
            raise InvalidInput(
                f"{entry.quantity} units of {entry.sku} received but the case announced "
                f"{announced[entry.sku]}",
                f"data.received.{index}.quantity",
            )
        received[entry.sku] = entry.quantity
    case.details["received"] = received


def _refund_due(case: Case) -> int:
    """The refund: the base (items or the partial amount asked for, capped at submission),
    at most the price of the units received, less the missing gifts' value.

    It only ever lowers what submission claimed under the order's lock, so the order's caps
    still hold without taking the lock again: no transition but a submission or a revision
    reads the order (the hot path stays as it was)."""
    base = int(case.details.get("refund_base", case.refund_amount))
    received = case.details.get("received")
    if received is not None and case.type is not CaseType.REFUND_ONLY:
        base = min(base, sum(item.unit_price * received.get(item.sku, 0) for item in case.items))
    return max(0, base - case.gift_deduction)


def _revise_amount(case: Case, requested: int) -> None:
    if requested > case.items_amount:
        raise InvalidInput(
            f"asks {requested} fen but the items were paid {case.items_amount} fen",
            "data.requested_amount",
        )
    base = min(requested, case.details.get("refund_cap", requested))
    case.requested_amount = requested
    case.details["refund_base"] = base
    case.refund_amount = base


def _on_enter(case: Case, trigger: str, context: Context) -> None:
    state = case.state
    if state is CaseState.RECEIVED:
        case.details["goods_back"] = True
    elif state is CaseState.INSPECTED:
        case.details["goods_back"] = True
        case.refund_amount = _refund_due(case)
    elif state is CaseState.REFUNDING:
        if case.refund_route is None or trigger != "retry_refund":
            case.refund_route = (
                RefundRoute.BANK_TRANSFER
                if "bank_account" in case.details
                else RefundRoute.ORIGINAL_CHANNEL
            )
        # The key is persisted with the transition, before any payment call. Only a definite
        # failure (refund_failed) starts a new attempt with a new key; coming back to refunding
        # while the last attempt has no result (an admin ruling after an escalation) reuses it,
        # so the gateway answers the first call instead of paying again.
        if case.refund_key is None or not case.details.get("refund_unsettled"):
            if "received" in case.details:
                # A new attempt pays for the units that came back; a retry of an unsettled one
                # keeps its amount with its key.
                case.refund_amount = _refund_due(case)
            case.refund_attempts += 1
            case.refund_key = f"refund-{case.id}-{case.refund_attempts}"
        case.details["refund_unsettled"] = True
    elif state in (CaseState.REFUNDED, CaseState.REFUND_FAILED) and trigger in (
        "confirm_refund",
        "fail_refund",
    ):
        # An unknown outcome keeps the attempt (and its key) open for the retry.
        case.details["refund_unsettled"] = bool(case.details.pop("refund_outcome_unknown", False))
        if state is CaseState.REFUND_FAILED:
            max_attempts = context.policy.refund_retry.max_attempts
            # Failures, not attempts, count: an unknown outcome keeps its attempt (and key) but
            # must still back off and eventually park.
            failures = int(case.details.get("refund_failures", 0)) + 1
            case.details["refund_failures"] = failures
            case.details["refund_parked"] = failures >= max_attempts
    elif state is CaseState.AWAITING_BANK_ACCOUNT and trigger != "remind_bank_account":
        case.refund_route = RefundRoute.BANK_TRANSFER
        case.details["bank_account_reminded"] = False


def messages_for(case: Case, record: TransitionRecord) -> list[OutboxMessage]:
    """Side effects of one transition, run by the workers after commit."""
    assert case.id is not None
    # str() of a StrEnum member is its value, without the ``.value`` property's cost.
    base = {"case_id": case.id, "seq": record.seq, "state": str(case.state)}
    messages = [
        OutboxMessage(
            "case.transitioned",
            case.id,
            {
                **base,
                "trigger": record.trigger,
                "from_state": str(record.from_state) if record.from_state else None,
                "buyer_id": case.buyer_id,
                "merchant_id": case.merchant_id,
            },
            record.at,
        )
    ]

    def add(topic: str, **payload: Any) -> None:
        messages.append(OutboxMessage(topic, case.id or 0, {**base, **payload}, record.at))

    state = case.state
    if state is CaseState.APPROVED and case.type in definitions.RETURN_LEG:
        add("pickup.requested", order_id=case.order_id)
    elif state is CaseState.REFUNDING:
        add(
            "refund.requested",
            amount=case.refund_amount,
            route=str(case.refund_route),
            channel=case.payment.channel,
            idempotency_key=case.refund_key,
        )
    elif state is CaseState.AWAITING_BANK_ACCOUNT:
        kind = "reminder" if record.trigger == "remind_bank_account" else "request"
        add("bank_account.requested", kind=kind, buyer_id=case.buyer_id)
    elif state is CaseState.DISPUTED:
        add("dispute.opened", trigger=record.trigger)
    elif state is CaseState.REFUND_FAILED and case.details.get("refund_parked"):
        add(
            "refund.parked",
            attempts=case.refund_attempts,
            failures=case.details.get("refund_failures", 0),
            error=case.details.get("last_refund_error"),
        )
    return messages


def timer_for(case: Case, policy: Policy, now: datetime, previous: Timer | None) -> Timer | None:
    """The deadline the case's new state arms, or None.

    A state that arms the same kind as the one just left (approved -> pickup) keeps its due
    time, so booking a pickup does not give the buyer a fresh week, and an extension survives.
    """
    assert case.id is not None
    for spec in TIMERS.get(case.state, ()):
        if case.type not in spec.types:
            continue
        if spec.flag is not None and bool(case.details.get(spec.flag[0])) != spec.flag[1]:
            continue
        if previous is not None and previous.kind == spec.kind:
            due = previous.due_at
        elif spec.kind == "refund_retry":
            due = now + policy.refund_retry.delay_after(int(case.details.get("refund_failures", 1)))
        else:
            due = now + policy.timer(spec.kind, str(case.type))
        return Timer(
            case_id=case.id,
            kind=spec.kind,
            trigger=spec.trigger,
            state=case.state,
            version=case.version,
            due_at=due,
            created_at=now,
        )
    return None


def extension(
    deadline: Timer, until: datetime | None, hours: float | None, longest: timedelta
) -> datetime:
    """The new due time of an admin's deadline extension: later than the current one, by at
    most ``longest`` (so no deadline is pushed to year 9999 and never fires)."""
    if (until is None) == (hours is None):
        raise InvalidInput("give either until or hours", "data")
    if hours is not None and timedelta(hours=hours) > longest:
        raise InvalidInput(
            f"an extension is at most {_hours(longest)} hours ({longest.days} days)", "data.hours"
        )
    new_due = until if until is not None else deadline.due_at + timedelta(hours=hours or 0)
    if new_due <= deadline.due_at:
        raise StateConflict(
            Phrase(new_due, " is not after the current deadline ", deadline.due_at),
            "data.until",
        )
    if new_due - deadline.due_at > longest:
        raise StateConflict(
            Phrase(
                new_due,
                f" is more than {_hours(longest)} hours after the current deadline ",
                deadline.due_at,
                " (the longest extension)",
            ),
            "data.until",
        )
    return new_due


def _hours(duration: timedelta) -> str:
    return f"{duration.total_seconds() / 3600:g}"
