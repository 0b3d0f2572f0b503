"""End to end on real workers: cases travel their whole path moved only by events, timers and the
workers' own effects, on Redis with PostgreSQL and on the embedded broker with SQLite.

The test process submits cases (the buyer's application) and sends events the way producers do
(``send_task("aftersales.ingest_event", ...)``); everything else is the workers': the pickup
booking after an approval, the refund payment after ``refunding``, every timer when the shared
``FileClock`` is moved past it.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest

from workflow.states import CaseState

from .conftest import wait_for
from .support import (
    T0,
    Stack,
    buyer,
    carrier,
    merchant,
    open_stack,
    stack_params,
    submit,
)


@pytest.fixture(params=stack_params())
def stack(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Stack]:
    broker, database_kind = request.param
    with open_stack(request, tmp_path, broker, database_kind) as opened:
        yield opened


def _apply(stack: Stack, *envelopes: dict[str, object]) -> None:
    """Send the events and wait until each has been applied (not ignored nor dead-lettered)."""
    outcomes = stack.outcomes(stack.send_events(*envelopes))
    assert outcomes == ["applied"] * len(envelopes), [
        (e["type"], e["case_id"], o) for e, o in zip(envelopes, outcomes, strict=True)
    ]


def test_each_case_type_reaches_its_outcome_by_events_and_effects(stack: Stack) -> None:
    # given two workers (beat in one) and a case of each type, submitted by the buyer
    stack.start_workers(2)
    rr = submit(stack, "return_refund", "o-rr")
    ex = submit(stack, "exchange", "o-ex")
    rp = submit(stack, "repair", "o-rp")
    ro = submit(stack, "refund_only", "o-ro")
    returns = (rr, ex, rp)

    # when the merchant approves each: the workers book the pickups, and pay the refund-only
    _apply(stack, *(merchant(stack, "approved", case) for case in (*returns, ro)))
    stack.wait_states(
        {rr: CaseState.PICKUP, ex: CaseState.PICKUP, rp: CaseState.PICKUP, ro: CaseState.REFUNDED}
    )
    # and the carrier picks the returns up and delivers them to the merchant
    _apply(stack, *(carrier(stack, "picked_up", case, f"SF{case}") for case in returns))
    stack.wait_states(dict.fromkeys(returns, CaseState.SHIPPED_BACK))
    _apply(stack, *(carrier(stack, "delivered", case, f"SF{case}") for case in returns))
    stack.wait_states(dict.fromkeys(returns, CaseState.RETURN_DELIVERED))
    # and the merchant confirms receipt and inspects: the return is refunded by a worker
    _apply(stack, *(merchant(stack, "receipt_confirmed", case) for case in returns))
    _apply(stack, *(merchant(stack, "inspected", case) for case in returns))
    stack.wait_states({rr: CaseState.REFUNDED, ex: CaseState.INSPECTED, rp: CaseState.INSPECTED})
    # and the replacement and the repaired phone go back to the buyer, who confirms them
    _apply(
        stack,
        merchant(stack, "replacement_shipped", ex, tracking_no=f"FX{ex}", carrier="SF"),
        merchant(stack, "repaired_shipped", rp, tracking_no=f"FX{rp}", carrier="SF"),
    )
    _apply(stack, *(carrier(stack, "delivered", case, f"FX{case}") for case in (ex, rp)))
    stack.wait_states({ex: CaseState.DELIVERED_TO_BUYER, rp: CaseState.DELIVERED_TO_BUYER})
    _apply(stack, *(buyer(stack, "delivery_confirmed", case) for case in (ex, rp)))

    # then every case reached its outcome
    stack.wait_states(
        {
            rr: CaseState.REFUNDED,
            ex: CaseState.EXCHANGED,
            rp: CaseState.REPAIRED,
            ro: CaseState.REFUNDED,
        }
    )
    # along its whole path, each step once, by the party that took it
    review = [("submit", "buyer:b1", "submitted"), ("approve", "merchant:m1", "approved")]
    return_leg = [
        ("book_pickup", "system", "pickup"),
        ("record_pickup", "carrier:sf-express", "shipped_back"),
        ("record_return_delivery", "carrier:sf-express", "return_delivered"),
        ("confirm_receipt", "merchant:m1", "received"),
        ("inspect", "merchant:m1", "inspected"),
    ]
    refund = [("start_refund", "system", "refunding"), ("confirm_refund", "payment", "refunded")]

    def outbound(ship: str, outcome: str) -> list[tuple[str, str, str]]:
        return [
            (ship, "merchant:m1", "shipped_to_buyer"),
            ("record_buyer_delivery", "carrier:sf-express", "delivered_to_buyer"),
            ("confirm_delivery", "buyer:b1", outcome),
        ]

    assert stack.history(rr) == review + return_leg + refund
    assert stack.history(ex) == review + return_leg + outbound("ship_replacement", "exchanged")
    assert stack.history(rp) == review + return_leg + outbound("ship_repaired", "repaired")
    assert stack.history(ro) == review + refund
    # and exactly the refunds were paid, once each, in full (no gift was missing)
    assert [(e.amount, e.status) for e in stack.ledger(rr)] == [(19900, "succeeded")]
    assert [(e.amount, e.status) for e in stack.ledger(ro)] == [(19900, "succeeded")]
    assert stack.ledger(ex) == stack.ledger(rp) == []
    # and every side effect the transitions asked for was carried out
    stack.wait_outbox_completed()
    assert stack.dead_letters() == []
    # among them a notice of every transition to the buyer and the merchant (many to a message)
    transitions = [row.id for row in stack.outbox_rows() if row.topic == "case.transitioned"]
    assert len(transitions) == sum(len(stack.history(case)) for case in (rr, ex, rp, ro))
    told = {notification.key for notification in stack.notifications()}
    assert {f"notify-{i}-{who}" for i in transitions for who in ("buyer:b1", "merchant:m1")} <= told


def test_every_timeout_of_the_rules_fires_through_the_workers(stack: Stack) -> None:
    """RULES.md part B: each waiting period runs out on a case of its own, and the workers'
    sweeps fire its timeout once the shared clock is moved past it."""
    # given two workers (beat in one) and seven cases, each left waiting for someone at T0
    stack.start_workers(2)
    review = submit(stack, "return_refund", "o-review")  # the merchant never reviews
    consent = submit(  # nor consents to a refund without return of delivered goods
        stack,
        "refund_only",
        "o-consent",
        reason="quality_issue",
        delivered_at="2026-11-18T15:00:00+08:00",
    )
    receipt = submit(stack, "return_refund", "o-receipt")  # nor confirms the return's receipt
    replacement = submit(stack, "exchange", "o-replacement")  # nor ships the replacement
    confirmation = submit(stack, "repair", "o-confirmation")  # the buyer never confirms
    dispute = submit(stack, "return_refund", "o-dispute")  # nor disputes the rejection
    bank = submit(  # nor gives a bank account: the card's 180-day refund window has passed
        stack,
        "refund_only",
        "o-bank",
        payment={"channel": "card", "amount": 9900, "paid_at": "2026-04-01T10:00:00+08:00"},
        items=[{"sku": "lamp", "quantity": 1, "unit_price": 9900}],
    )
    returns = (receipt, replacement, confirmation)
    _apply(
        stack,
        *(merchant(stack, "approved", case) for case in (*returns, bank)),
        merchant(stack, "rejected", dispute, reason="worn and washed"),
    )
    stack.wait_states(
        {**dict.fromkeys(returns, CaseState.PICKUP), bank: CaseState.AWAITING_BANK_ACCOUNT}
    )
    _apply(stack, *(carrier(stack, "delivered", case, f"SF{case}") for case in returns))
    stack.wait_states(dict.fromkeys(returns, CaseState.RETURN_DELIVERED))
    goods_back = (replacement, confirmation)
    _apply(stack, *(merchant(stack, "receipt_confirmed", case) for case in goods_back))
    _apply(stack, *(merchant(stack, "inspected", case) for case in goods_back))
    _apply(stack, merchant(stack, "repaired_shipped", confirmation, tracking_no="FX1"))
    _apply(stack, carrier(stack, "delivered", confirmation, "FX1"))
    waiting = {
        review: CaseState.SUBMITTED,  # merchant review: 48 h
        consent: CaseState.SUBMITTED,  # merchant consent: 48 h
        receipt: CaseState.RETURN_DELIVERED,  # merchant receipt: 10 days
        replacement: CaseState.INSPECTED,  # replacement shipment: 48 h
        confirmation: CaseState.DELIVERED_TO_BUYER,  # buyer confirmation: 10 days
        dispute: CaseState.REJECTED,  # dispute window: 7 days
        bank: CaseState.AWAITING_BANK_ACCOUNT,  # bank account: 7 days, reminder
    }
    stack.wait_states(waiting)
    stack.wait_outbox_completed()

    def at(hours: int, expected: dict[int, CaseState]) -> None:
        """Move the clock to T0 + ``hours``; the cases reach ``expected`` by themselves."""
        stack.clock.set(T0 + timedelta(hours=hours))
        stack.wait_states({**waiting, **expected})
        waiting.update(expected)
        stack.wait_outbox_completed()

    # when the clock passes 48 h: the review is approved (and a pickup booked), the refund
    # without return the merchant never consented to goes to the platform (RULES.md C), the
    # exchange that was never shipped becomes a refund, which a worker pays
    at(
        49,
        {
            review: CaseState.PICKUP,
            consent: CaseState.DISPUTED,
            replacement: CaseState.REFUNDED,
        },
    )
    # and 7 days: the rejection is final, the buyer is reminded of the bank account
    at(169, {dispute: CaseState.CLOSED})
    wait_reminded(stack, bank)
    # and 10 days: the return not shipped within 7 days of the approval (at 49 h) is closed, the
    # delivered return is received and, with no second wait for an inspection, refunded by a
    # worker (RULES.md B: auto-receive, proceed to refund), the repaired phone confirmed
    at(
        241,
        {review: CaseState.CLOSED, receipt: CaseState.REFUNDED, confirmation: CaseState.REPAIRED},
    )
    # and 7 days after the reminder the missing bank account goes to the platform
    at(338, {bank: CaseState.DISPUTED})

    # then each timeout fired exactly once, as the system
    assert timeouts(stack, review) == ["auto_approve", "expire_return"]
    assert timeouts(stack, consent) == ["escalate"]
    assert timeouts(stack, receipt) == ["auto_receive", "start_refund"]
    assert timeouts(stack, replacement) == ["convert_to_refund"]
    assert timeouts(stack, confirmation) == ["auto_confirm_delivery"]
    assert timeouts(stack, dispute) == ["expire_dispute_window"]
    assert timeouts(stack, bank) == ["start_refund", "remind_bank_account", "escalate"]
    assert stack.fired_timers(review) == ["merchant_review", "return_shipment"]
    assert stack.fired_timers(consent) == ["merchant_consent"]
    assert stack.fired_timers(receipt) == ["merchant_receipt"]
    assert stack.fired_timers(replacement) == ["replacement_shipment"]
    assert stack.fired_timers(confirmation) == ["buyer_confirmation"]
    assert stack.fired_timers(dispute) == ["dispute_window"]
    assert stack.fired_timers(bank) == ["bank_account_reminder", "bank_account_escalation"]
    # and the timeouts that lead to a refund paid it once
    assert [e.status for e in stack.ledger(replacement)] == ["succeeded"]
    assert [e.status for e in stack.ledger(receipt)] == ["succeeded"]
    assert stack.ledger(bank) == []
    assert stack.ledger(consent) == []
    assert stack.dead_letters() == []


def wait_reminded(stack: Stack, case_id: int) -> None:
    wait_for(lambda: "remind_bank_account" in stack.triggers(case_id), "the bank account reminder")
    stack.wait_outbox_completed()


def timeouts(stack: Stack, case_id: int) -> list[str]:
    """The triggers the system fired on the case after its submission (timers, follow-ups,
    the pickup booking left out)."""
    return [
        trigger
        for trigger, actor, _ in stack.history(case_id)
        if actor == "system" and trigger != "book_pickup"
    ]
