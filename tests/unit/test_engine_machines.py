"""Firing a trigger through a case type's shared ``transitions`` machine moves a case where the
table in ``definitions`` says, for every trigger, source state and routing-condition outcome."""

from __future__ import annotations

import itertools
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest
from transitions import MachineError

from config.policy import load_policy
from workflow import definitions, engine
from workflow.model import SYSTEM, Case, Item, Payment, RefundRoute
from workflow.states import CaseState, CaseType

PAID_AT = datetime(2026, 11, 1, 2, 0, tzinfo=UTC)
POLICY = load_policy()


def _case(
    case_type: CaseType, state: CaseState, goods_back: bool, channel_open: bool, consent: bool
) -> Case:
    details: dict[str, object] = {"goods_back": goods_back, "merchant_consent_required": consent}
    if channel_open:
        # A bank transfer with an account given is always open (engine._refund_channel_open).
        details["bank_account"] = {"name": "x", "bank": "y", "account_no": "6222000011112222"}
    return Case(
        type=case_type,
        state=state,
        order_id="o-1",
        buyer_id="b1",
        merchant_id="m1",
        category="clothing",
        reason="no_reason",
        payment=Payment("wechat_pay", 19_900, PAID_AT),
        delivered_at=PAID_AT,
        items=[Item("sku-1", 1, 19_900)],
        gifts=[],
        created_at=PAID_AT,
        updated_at=PAID_AT,
        id=1,
        refund_route=RefundRoute.BANK_TRANSFER if channel_open else None,
        details=details,
    )


def _binding(case: Case) -> engine._Binding:
    # Years after payment: the original channel's refund window is closed.
    context = engine.Context(POLICY, PAID_AT + timedelta(days=3650), SYSTEM)
    return engine._Binding(replace(case, details=dict(case.details)), context, case.state.value)


def _expected(
    case_type: CaseType, trigger: str, state: CaseState, holds: dict[str, bool]
) -> tuple[bool, str] | None:
    """(moved, state after) by the table: the first row from ``state`` whose condition holds;
    None when the trigger has no row from ``state``."""
    rows = [
        rule
        for rule in definitions.rules_for(case_type)
        if rule.trigger == trigger and state in rule.sources
    ]
    if not rows:
        return None
    for rule in rows:
        if rule.when is None or holds[rule.when]:
            return True, rule.dest.value
    return False, state.value


@pytest.mark.parametrize("case_type", list(CaseType))
def test_the_shared_machine_moves_a_case_as_the_table_says(case_type: CaseType) -> None:
    machine = engine.machine_for(case_type)
    destinations: dict[tuple[str, CaseState], set[str]] = {}
    for trigger in machine.events:
        for state in (CaseState(name) for name in machine.states):
            for goods_back, channel_open, consent in itertools.product((False, True), repeat=3):
                # given a case in this state, with the routing conditions holding or not
                binding = _binding(_case(case_type, state, goods_back, channel_open, consent))
                holds = {
                    "goods_back": goods_back,
                    "refund_channel_open": channel_open,
                    "merchant_consent_required": consent,
                }
                expected = _expected(case_type, trigger, state, holds)
                if expected is None:
                    # then a trigger with no row from this state is refused by the machine
                    with pytest.raises(MachineError):
                        engine._move(binding, trigger)
                    continue
                # when the trigger fires through the machine
                moved = engine._move(binding, trigger)
                # then the case moves to the first row whose condition holds
                assert (moved, binding.state) == expected, (
                    f"{case_type.value} {trigger} from {state.value}, "
                    f"goods_back={goods_back}, channel_open={channel_open}, consent={consent}"
                )
                destinations.setdefault((trigger, state), set()).add(binding.state)
    # Some rows are routed by a condition: both of its outcomes were compared.
    assert any(len(reached) > 1 for reached in destinations.values())
    # One machine per case type, shared: it keeps no case bound after a trigger.
    assert engine.machine_for(case_type) is machine
    assert machine.models == []
