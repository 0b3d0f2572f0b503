"""The engine's direct walk of a machine's transitions moves a case exactly as firing the event
through ``transitions`` does, for every trigger, source state and routing-condition outcome."""

from __future__ import annotations

import itertools
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest
from transitions import MachineError

from config.policy import load_policy
from workflow import engine
from workflow.model import SYSTEM, Case, Item, Payment, RefundRoute
from workflow.states import CaseState, CaseType

PAID_AT = datetime(2026, 11, 1, 2, 0, tzinfo=UTC)
POLICY = load_policy()


def _case(case_type: CaseType, state: CaseState, goods_back: bool, channel_open: bool) -> Case:
    details: dict[str, object] = {"goods_back": goods_back}
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


@pytest.mark.parametrize("case_type", list(CaseType))
def test_direct_walk_matches_the_library(case_type: CaseType) -> None:
    machine = engine.machine_for(case_type)
    destinations: dict[tuple[str, CaseState], set[str]] = {}
    for trigger, event in machine.events.items():
        for state in (CaseState(name) for name in machine.states):
            for goods_back, channel_open in itertools.product((False, True), repeat=2):
                case = _case(case_type, state, goods_back, channel_open)
                ours, theirs = _binding(case), _binding(case)
                if state.value not in event.transitions:
                    # No row from this state: both refuse the same way.
                    with pytest.raises(MachineError):
                        engine._trigger(case_type, trigger, ours)
                    with pytest.raises(MachineError):
                        event.trigger(theirs)
                    continue
                moved = engine._trigger(case_type, trigger, ours)
                assert (moved, ours.state) == (event.trigger(theirs), theirs.state), (
                    f"{case_type.value} {trigger} from {state.value}, "
                    f"goods_back={goods_back}, channel_open={channel_open}"
                )
                destinations.setdefault((trigger, state), set()).add(ours.state)
    # Some rows are routed by a condition: both of its outcomes were compared.
    assert any(len(reached) > 1 for reached in destinations.values())
