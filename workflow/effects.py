"""Side effects of transitions: what the workers do with the outbox rows after commit.

A relay publishes a transition's outbox rows at least once, so every handler is idempotent: it
reads the case as it is now, skips an entry whose case has moved on, and passes one stable
idempotency key to the remote and to the transition it fires. ``GatewayUnavailable`` (outcome
unknown) is retried with the same key; ``GatewayRejected`` or a failed ``RefundOutcome`` is
definite. No SQL and no Celery here: ``tasks/effects.py`` runs ``EffectService.handle`` in one
task per outbox topic family. See docs/side-effects.md.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from types import MappingProxyType
from typing import Any

from workflow.clock import Clock, ensure_utc
from workflow.definitions import RETURN_LEG
from workflow.errors import InvalidInput, NotAllowed
from workflow.gateways import (
    Delivery,
    GatewayRejected,
    Notifier,
    PaymentGateway,
    PickupBooker,
    Shipper,
)
from workflow.model import SYSTEM, Actor, Case, OutboxEntry, RefundRoute, TransitionRecord
from workflow.payloads import BankAccount
from workflow.service import CaseService, FireResult
from workflow.states import CaseState, CaseType, Role

# == topics and the kinds of effect they ask for ==================================================

CASE_TRANSITIONED = "case.transitioned"
PICKUP_REQUESTED = "pickup.requested"
REFUND_REQUESTED = "refund.requested"
BANK_ACCOUNT_REQUESTED = "bank_account.requested"
DISPUTE_OPENED = "dispute.opened"
REFUND_PARKED = "refund.parked"


class EffectKind(StrEnum):
    """What a worker does with an outbox row; ``tasks/effects.py`` names a Celery task per kind."""

    BOOK_PICKUP = "book_pickup"
    EXECUTE_REFUND = "execute_refund"
    #: Notifications; many rows' notices may travel together (``EffectService.notify_many``).
    NOTIFY = "notify"


#: Which kind of effect each outbox topic is (every one is performed by ``EffectService.handle``).
effect_for_topic: Mapping[str, EffectKind] = MappingProxyType(
    {
        CASE_TRANSITIONED: EffectKind.NOTIFY,
        PICKUP_REQUESTED: EffectKind.BOOK_PICKUP,
        REFUND_REQUESTED: EffectKind.EXECUTE_REFUND,
        BANK_ACCOUNT_REQUESTED: EffectKind.NOTIFY,
        DISPUTE_OPENED: EffectKind.NOTIFY,
        REFUND_PARKED: EffectKind.NOTIFY,
    }
)


@dataclass(frozen=True)
class RetryPolicy:
    """Capped exponential backoff of a task's retries after ``GatewayUnavailable``."""

    first_seconds: float
    max_seconds: float
    #: Retries after the first try; then the task calls ``EffectService.handle_exhausted``.
    max_retries: int

    def delay(self, retries: int) -> float:
        """Seconds to wait before retry number ``retries + 1`` (``retries`` done so far)."""
        return float(min(self.first_seconds * 2 ** max(retries, 0), self.max_seconds))


#: Suggested retry policy per kind. A refund's in-task retries are short: after them the case
#: goes to ``refund_failed`` with the outcome unknown and the durable ``refund_retry`` timer takes
#: over (minutes to hours, same key). A pickup keeps trying for about a day while the case waits
#: in ``approved``; the buyer may ship by themselves at any time meanwhile.
RETRY_POLICY: Mapping[EffectKind, RetryPolicy] = MappingProxyType(
    {
        EffectKind.BOOK_PICKUP: RetryPolicy(first_seconds=10, max_seconds=600, max_retries=150),
        EffectKind.EXECUTE_REFUND: RetryPolicy(first_seconds=5, max_seconds=300, max_retries=8),
        EffectKind.NOTIFY: RetryPolicy(first_seconds=10, max_seconds=900, max_retries=30),
    }
)


# == results =======================================================================================


class EffectStatus(StrEnum):
    #: The effect ran (or had run: a replay found the earlier result).
    DONE = "done"
    #: Nothing to do: the case moved on, or the entry was superseded.
    SKIPPED = "skipped"
    #: A definite failure was recorded (and the people concerned told); not retried.
    FAILED = "failed"


@dataclass(frozen=True)
class EffectResult:
    topic: str
    case_id: int
    status: EffectStatus
    detail: str = ""
    entry_id: int | None = None
    at: datetime | None = None


#: The recipient of messages for the platform's operators.
ADMINS = "admins"
#: Refund results are reported as the payment gateway would report them.
PAYMENT = Actor(Role.PAYMENT)
#: ``payloads.RefundResult.error`` is at most this long.
_MAX_ERROR = 2000
_OUTBOUND_TRIGGERS: Mapping[CaseType, str] = MappingProxyType(
    {CaseType.EXCHANGE: "ship_replacement", CaseType.REPAIR: "ship_repaired"}
)


class EffectService:
    """Runs the side effect of one outbox entry; safe to call any number of times per entry."""

    def __init__(
        self,
        cases: CaseService,
        carrier: PickupBooker,
        payments: PaymentGateway,
        notifier: Notifier,
        shipper: Shipper | None = None,
        clock: Clock | None = None,
    ) -> None:
        self.cases = cases
        self.carrier = carrier
        self.payments = payments
        self.notifier = notifier
        self.shipper = shipper
        self.clock = clock or cases.clock

    # -- dispatch ----------------------------------------------------------------------------------
    def handle(self, entry: OutboxEntry) -> EffectResult:
        """Run the entry's effect. ``GatewayUnavailable`` and ``Conflict`` propagate: retry."""
        if entry.topic == PICKUP_REQUESTED:
            return self.book_pickup(entry)
        if entry.topic == REFUND_REQUESTED:
            return self.execute_refund(entry)
        if entry.topic in _NOTICES:
            return self.notify(entry)
        return self._result(entry, EffectStatus.SKIPPED, f"no effect for topic {entry.topic}")

    def handle_exhausted(self, entry: OutboxEntry, error: str) -> EffectResult:
        """The task gave up retrying ``GatewayUnavailable``; hand the case to its slow path."""
        if entry.topic == REFUND_REQUESTED:
            return self.handle_refund_exhausted(entry, error)
        if entry.topic == PICKUP_REQUESTED:
            return self.handle_pickup_exhausted(entry, error)
        return self._result(entry, EffectStatus.FAILED, f"gave up: {error}")

    # -- pickup.requested --------------------------------------------------------------------------
    def book_pickup(self, entry: OutboxEntry) -> EffectResult:
        """Book the courier pickup and move the approved case to ``pickup`` with its details.

        The carrier key is per approval (``pickup-{case}-{seq}``): redeliveries of the entry get
        the same booking, a case approved again later (after a ruling) gets a new one.
        ``GatewayUnavailable`` propagates; the case waits in ``approved`` meanwhile.
        """
        case = self.cases.get(entry.case_id).case
        if case.state is not CaseState.APPROVED or case.type not in RETURN_LEG:
            return self._result(entry, EffectStatus.SKIPPED, f"case is {case.state.value}")
        approved_at = _entered(self.cases.history(entry.case_id), CaseState.APPROVED)
        if entry.payload.get("seq", approved_at) != approved_at:
            # Approved again since (a ruling after an escalation): that approval's entry books.
            detail = f"superseded by the approval at version {approved_at}"
            return self._result(entry, EffectStatus.SKIPPED, detail)
        key = f"pickup-{entry.case_id}-{approved_at}"
        try:
            info = self.carrier.book(entry.case_id, case.order_id, key)
        except GatewayRejected as refused:
            self._tell_pickup_failed(entry, case, str(refused))
            return self._result(entry, EffectStatus.FAILED, f"carrier refused: {refused}")
        try:
            fired = self.cases.fire(
                entry.case_id,
                "book_pickup",
                SYSTEM,
                data=info.as_data(),
                idempotency_key=f"outbox-{entry.id}",
            )
        except NotAllowed:
            # The buyer shipped, cancelled, or the deadline closed the case while we booked.
            state = self.cases.get(entry.case_id).case.state.value
            return self._result(entry, EffectStatus.SKIPPED, f"case moved on to {state}")
        return self._result(entry, EffectStatus.DONE, _fired(fired, f"pickup {info.pickup_code}"))

    def handle_pickup_exhausted(self, entry: OutboxEntry, error: str) -> EffectResult:
        """No booking after all retries: tell buyer and merchant; the buyer ships by themselves
        (``ship_back``) before the return deadline."""
        case = self.cases.get(entry.case_id).case
        if case.state is not CaseState.APPROVED:
            return self._result(entry, EffectStatus.SKIPPED, f"case is {case.state.value}")
        self._tell_pickup_failed(entry, case, error)
        return self._result(entry, EffectStatus.FAILED, f"no pickup booked: {error}")

    def _tell_pickup_failed(self, entry: OutboxEntry, case: Case, error: str) -> None:
        message = (
            f"Case {entry.case_id}: no courier pickup could be booked ({error}). "
            "Please send the return parcel yourself and enter its tracking number."
        )
        for recipient in (_buyer(case), _merchant(case)):
            key = f"pickup-failed-{entry.id}-{recipient}"
            self.notifier.send(recipient, PICKUP_REQUESTED, message, key)

    # -- refund.requested --------------------------------------------------------------------------
    def execute_refund(self, entry: OutboxEntry) -> EffectResult:
        """Pay the refund of the entry's attempt once, and record the gateway's answer.

        The idempotency key was persisted with the transition into ``refunding``, before this
        call; the gateway honours it, so a redelivered entry, a retry after a timeout, or a crash
        between the payment and our commit all end with one payment. The result is fired with the
        key ``refund-result-{key}``: a second handler of the same entry replays it.
        ``GatewayUnavailable`` and ``Conflict`` propagate (retry with the same key).
        """
        key = entry.payload.get("idempotency_key")
        case = self.cases.get(entry.case_id).case
        stale = _stale_refund(case, key)
        if stale is not None or key is None:
            return self._result(entry, EffectStatus.SKIPPED, stale or "entry has no key")
        amount = case.refund_amount
        if amount <= 0:
            # Nothing to pay (gift deductions took it all): gateways refuse zero amounts.
            return self._settle(entry, key, "confirm_refund", {"reference": "nothing-to-pay"})
        route = case.refund_route or RefundRoute.ORIGINAL_CHANNEL
        outcome = self.payments.refund(
            key, entry.case_id, amount, case.payment.channel, route, _bank_account(case, route)
        )
        if outcome.succeeded:
            data: dict[str, Any] = {"reference": outcome.reference}
            return self._settle(entry, key, "confirm_refund", data, paid=True)
        error = (outcome.error or "declined by the payment gateway")[:_MAX_ERROR]
        return self._settle(entry, key, "fail_refund", {"error": error, "definite": True})

    def handle_refund_exhausted(self, entry: OutboxEntry, error: str) -> EffectResult:
        """The gateway stayed unavailable through the task's retries: the attempt's outcome is
        unknown. ``fail_refund`` with ``definite=False`` moves the case to ``refund_failed``
        keeping the same key; the durable ``refund_retry`` timer retries it with backoff (a
        payment made meanwhile is then answered from the gateway's ledger, not paid again)."""
        key = entry.payload.get("idempotency_key")
        case = self.cases.get(entry.case_id).case
        stale = _stale_refund(case, key)
        if stale is not None:
            return self._result(entry, EffectStatus.SKIPPED, stale)
        reason = f"payment gateway unavailable, outcome unknown: {error}"[:_MAX_ERROR]
        try:
            fired = self.cases.fire(
                entry.case_id,
                "fail_refund",
                PAYMENT,
                data={"error": reason, "definite": False},
                idempotency_key=f"refund-unknown-{entry.id}",
            )
        except NotAllowed:
            return self._result(entry, EffectStatus.SKIPPED, "case moved on meanwhile")
        return self._result(entry, EffectStatus.FAILED, _fired(fired, "outcome unknown"))

    def _settle(
        self,
        entry: OutboxEntry,
        key: str,
        trigger: str,
        data: dict[str, Any],
        paid: bool = False,
    ) -> EffectResult:
        try:
            fired = self.cases.fire(
                entry.case_id, trigger, PAYMENT, data=data, idempotency_key=f"refund-result-{key}"
            )
        except NotAllowed:
            reference = data.get("reference") if paid else None
            detail = self._moved_after_refund(entry, key, paid, reference)
            return self._result(entry, EffectStatus.SKIPPED, detail)
        status = EffectStatus.DONE if trigger == "confirm_refund" else EffectStatus.FAILED
        return self._result(entry, status, _fired(fired, f"{trigger} {key}"))

    def _moved_after_refund(
        self, entry: OutboxEntry, key: str, paid: bool, reference: str | None
    ) -> str:
        """The case left ``refunding`` between our read and the result (an admin closed or
        escalated it). Money that moved is never dropped silently: unless a later attempt with
        the same key will pick the payment up, the admins are told."""
        case = self.cases.get(entry.case_id).case
        detail = f"case moved on to {case.state.value}"
        if not paid:
            return detail
        settles_later = case.refund_key == key and (
            case.state is CaseState.REFUNDED
            or (not case.is_terminal and bool(case.details.get("refund_unsettled")))
        )
        if settles_later:
            return f"{detail}; payment {reference} will be settled with the same key"
        message = (
            f"Case {entry.case_id}: refund {key} was paid (reference {reference}) but the case "
            f"is now {case.state.value}; reconcile by hand."
        )
        self.notifier.send(ADMINS, REFUND_REQUESTED, message, f"refund-orphan-{key}")
        return f"{detail}; payment {reference} reported to the admins"

    # -- notifications -----------------------------------------------------------------------------
    def notify(self, entry: OutboxEntry) -> EffectResult:
        """Tell the people concerned; each delivery keyed ``notify-{entry}-{recipient}``."""
        messages = self._notices(entry)
        for recipient, message in messages:
            self.notifier.send(recipient, entry.topic, message, _notice_key(entry, recipient))
        return self._sent(entry, messages)

    def notify_many(self, entries: Sequence[OutboxEntry]) -> list[EffectResult]:
        """The notices of many entries in one ``send_many`` call, keyed as ``notify`` keys them
        (so a batch and a single task for the same entry deliver once). ``GatewayUnavailable``
        propagates: retry them all."""
        notices: list[tuple[OutboxEntry, list[tuple[str, str]]]] = []
        for entry in entries:
            if entry.topic not in _NOTICES:
                raise ValueError(f"entry {entry.id}: {entry.topic} is not a notice")
            notices.append((entry, self._notices(entry)))
        deliveries = [
            Delivery(recipient, entry.topic, message, _notice_key(entry, recipient))
            for entry, messages in notices
            for recipient, message in messages
        ]
        if deliveries:
            self.notifier.send_many(deliveries)
        return [self._sent(entry, messages) for entry, messages in notices]

    def _sent(self, entry: OutboxEntry, messages: list[tuple[str, str]]) -> EffectResult:
        sent = ", ".join(recipient for recipient, _ in messages) or "nobody"
        return self._result(entry, EffectStatus.DONE, f"sent to {sent}")

    def _notices(self, entry: OutboxEntry) -> list[tuple[str, str]]:
        payload = entry.payload
        case_id = entry.case_id
        state = str(payload.get("state", ""))
        if entry.topic == CASE_TRANSITIONED:
            text = (
                f"Case {case_id}: {payload.get('from_state') or 'new'} -> {state} "
                f"({payload.get('trigger')})."
            )
            buyer_text = text
            if state == CaseState.PICKUP.value:
                pickup = self.cases.get(case_id).case.details.get("pickup") or {}
                buyer_text += (
                    f" Courier {pickup.get('carrier')} picks up the parcel {pickup.get('window')}"
                    f" at {pickup.get('address')}; pickup code {pickup.get('pickup_code')}."
                )
            return [
                (f"buyer:{payload.get('buyer_id')}", buyer_text),
                (f"merchant:{payload.get('merchant_id')}", text),
            ]
        if entry.topic == BANK_ACCOUNT_REQUESTED:
            again = " (reminder)" if payload.get("kind") == "reminder" else ""
            text = (
                f"Case {case_id}{again}: the original payment channel can no longer refund; "
                "please provide a bank account for the transfer."
            )
            return [(f"buyer:{payload.get('buyer_id')}", text)]
        case = self.cases.get(case_id).case
        if entry.topic == DISPUTE_OPENED:
            text = f"Case {case_id} is disputed ({payload.get('trigger')}); the platform steps in."
            return [(_buyer(case), text), (_merchant(case), text), (ADMINS, text)]
        if entry.topic == REFUND_PARKED:
            tries = payload.get("failures", payload.get("attempts"))
            admin_text = (
                f"Case {case_id}: refund parked after {tries} failed tries "
                f"(last error: {payload.get('error')}); retry, switch to bank transfer or close."
            )
            buyer_text = f"Case {case_id}: your refund is delayed; our staff will handle it."
            return [(ADMINS, admin_text), (_buyer(case), buyer_text)]
        return []

    # -- replacement / repaired goods --------------------------------------------------------------
    def ship_to_buyer(
        self, case_id: int, actor: Actor, idempotency_key: str | None = None
    ) -> FireResult:
        """The merchant has the platform's carrier ship the replacement (exchange) or the
        repaired goods (repair): book the shipment, then fire ``ship_replacement`` /
        ``ship_repaired`` as the merchant with its tracking number.

        An alternative to the merchant firing that trigger with a tracking number of their own
        shipment. The shipper's key is per entry into ``inspected``, so retries book once.
        """
        if self.shipper is None:
            raise RuntimeError("no shipper configured")
        case = self.cases.get(case_id, actor).case
        trigger = _OUTBOUND_TRIGGERS.get(case.type)
        if trigger is None:
            raise InvalidInput(f"a {case.type.value} case ships nothing to the buyer", "case")
        key = f"outbound-{case_id}-{_entered(self.cases.history(case_id), CaseState.INSPECTED)}"
        if case.state is not CaseState.INSPECTED:
            # Either a replay of a shipment that went out (same key) or a NotAllowed.
            return self.cases.fire(case_id, trigger, actor, idempotency_key=idempotency_key or key)
        shipment = self.shipper.ship(case_id, case.order_id, case.skus, key)
        return self.cases.fire(
            case_id,
            trigger,
            actor,
            data={"tracking_no": shipment.tracking_no, "carrier": shipment.carrier},
            idempotency_key=idempotency_key or key,
        )

    # -- helpers -----------------------------------------------------------------------------------
    def _result(self, entry: OutboxEntry, status: EffectStatus, detail: str) -> EffectResult:
        return EffectResult(entry.topic, entry.case_id, status, detail, entry.id, self.clock.now())


_NOTICES = frozenset({CASE_TRANSITIONED, BANK_ACCOUNT_REQUESTED, DISPUTE_OPENED, REFUND_PARKED})


def _notice_key(entry: OutboxEntry, recipient: str) -> str:
    """The notifier's key for one notice: the same from ``notify`` and ``notify_many``, so an
    entry sent both ways is delivered once."""
    return f"notify-{entry.id}-{recipient}"


def _stale_refund(case: Case, key: str | None) -> str | None:
    """Why a refund entry no longer applies, or None when it is the case's current attempt."""
    if case.state is not CaseState.REFUNDING:
        return f"case is {case.state.value}"
    if key is None or case.refund_key != key:
        return f"attempt {key} superseded by {case.refund_key}"
    return None


def _entered(history: Sequence[TransitionRecord], state: CaseState) -> int:
    """The version at which the case last entered ``state`` (0 if it never did)."""
    return max(
        (r.seq for r in history if r.to_state is state and r.from_state is not state), default=0
    )


def _bank_account(case: Case, route: RefundRoute) -> BankAccount | None:
    if route is not RefundRoute.BANK_TRANSFER:
        return None
    raw = case.details.get("bank_account")
    return BankAccount.model_validate(raw) if raw else None


def _buyer(case: Case) -> str:
    return str(Actor(Role.BUYER, case.buyer_id))


def _merchant(case: Case) -> str:
    return str(Actor(Role.MERCHANT, case.merchant_id))


def _fired(fired: FireResult, what: str) -> str:
    how = "replayed" if fired.replayed else "fired"
    return f"{what}: {how}, case {fired.case.state.value}"


# == outbox entries on the wire ====================================================================


def entry_to_message(entry: OutboxEntry) -> dict[str, Any]:
    """A JSON-safe form of an entry, for the relay to publish as the task's argument."""
    return {
        "id": entry.id,
        "topic": entry.topic,
        "case_id": entry.case_id,
        "payload": dict(entry.payload),
        "created_at": entry.created_at.isoformat(),
        "attempts": entry.attempts,
    }


def entry_from_message(message: Mapping[str, Any]) -> OutboxEntry:
    """The entry ``entry_to_message`` published."""
    return OutboxEntry(
        id=int(message["id"]),
        topic=str(message["topic"]),
        case_id=int(message["case_id"]),
        payload=dict(message.get("payload") or {}),
        created_at=ensure_utc(datetime.fromisoformat(str(message["created_at"]))),
        attempts=int(message.get("attempts", 0)),
    )
