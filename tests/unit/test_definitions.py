"""The transition tables are consistent with themselves and with the machines built from them."""

from __future__ import annotations

from collections import defaultdict

import pytest

from config.policy import Policy
from workflow import engine
from workflow.definitions import (
    ADMIN_FORCED,
    FOLLOW_UPS,
    REASON_REQUIRED,
    RULES,
    TIMERS,
    TRIGGERS,
    Rule,
    rules_for,
    states_for,
)
from workflow.states import TERMINAL_STATES, CaseState, CaseType, Role

_REVIEW_STATES = {
    CaseState.SUBMITTED,
    CaseState.REJECTED,
    CaseState.DISPUTED,
    CaseState.CANCELLED,
    CaseState.CLOSED,
}
_REFUND_STATES = {
    CaseState.REFUNDING,
    CaseState.REFUND_FAILED,
    CaseState.AWAITING_BANK_ACCOUNT,
    CaseState.REFUNDED,
}
_RETURN_LEG_STATES = {
    CaseState.APPROVED,
    CaseState.PICKUP,
    CaseState.SHIPPED_BACK,
    CaseState.RETURN_DELIVERED,
    CaseState.RECEIVED,
}
_INSPECTED_OUT = {CaseState.INSPECTED, CaseState.SHIPPED_TO_BUYER, CaseState.DELIVERED_TO_BUYER}

#: RULES.md part B, case types: which states each handling way goes through (written out).
EXPECTED_STATES = {
    CaseType.RETURN_REFUND: _REVIEW_STATES
    | _RETURN_LEG_STATES
    | _REFUND_STATES
    | {CaseState.INSPECTED},
    CaseType.EXCHANGE: _REVIEW_STATES
    | _RETURN_LEG_STATES
    | _REFUND_STATES
    | _INSPECTED_OUT
    | {CaseState.EXCHANGED},
    CaseType.REPAIR: _REVIEW_STATES
    | _RETURN_LEG_STATES
    | _REFUND_STATES
    | _INSPECTED_OUT
    | {CaseState.REPAIRED},
    CaseType.REFUND_ONLY: _REVIEW_STATES | _REFUND_STATES | {CaseState.APPROVED},
}


def _groups(case_type: CaseType) -> dict[tuple[str, CaseState], list[Rule]]:
    """The rows of a type by (trigger, source), in table order."""
    groups: dict[tuple[str, CaseState], list[Rule]] = defaultdict(list)
    for rule in rules_for(case_type):
        for source in rule.sources:
            groups[(rule.trigger, source)].append(rule)
    return groups


@pytest.mark.parametrize("case_type", list(CaseType))
def test_each_type_reaches_exactly_its_states(case_type: CaseType) -> None:
    # given: the table; when: exploring it from submitted; then: the states of RULES.md part B
    assert set(states_for(case_type)) == EXPECTED_STATES[case_type]


@pytest.mark.parametrize("case_type", list(CaseType))
def test_rows_of_one_trigger_and_source_agree_or_are_routed(case_type: CaseType) -> None:
    """The machine ignores roles and takes the first row whose condition holds: rows for the
    same trigger and source must share a destination, or route by condition with an
    unconditional last row."""
    # given: the rows of each (trigger, source); then: one destination, or routed by condition
    for (trigger, source), rows in _groups(case_type).items():
        dests = {row.dest for row in rows}
        if len(dests) == 1:
            continue
        assert all(row.when is not None for row in rows[:-1]), (trigger, source, rows)
        assert rows[-1].when is None, (trigger, source, rows)


@pytest.mark.parametrize("case_type", list(CaseType))
def test_every_trigger_has_an_unconditional_row_from_each_source(case_type: CaseType) -> None:
    # given: any (trigger, source) of the type; then: some row of it always applies
    for key, rows in _groups(case_type).items():
        assert any(row.when is None for row in rows), key


def test_routing_conditions_are_known_to_the_engine() -> None:
    # given: every `when` of the table; then: the engine has a condition of that name
    assert {rule.when for rule in RULES if rule.when} <= set(engine.CONDITIONS)


@pytest.mark.parametrize("case_type", list(CaseType))
def test_every_timer_trigger_is_a_system_trigger_allowed_from_its_state(
    case_type: CaseType,
) -> None:
    # given: every timer a state arms for this type
    reachable = set(states_for(case_type))
    for state, specs in TIMERS.items():
        if state not in reachable:
            continue
        for spec in specs:
            if case_type not in spec.types:
                continue
            # then: the system may fire its trigger from that state
            rows = _groups(case_type).get((spec.trigger, state), [])
            assert any(Role.SYSTEM in row.actors for row in rows), (state, spec)


@pytest.mark.parametrize("case_type", list(CaseType))
def test_follow_ups_are_system_triggers_from_the_state_they_follow(case_type: CaseType) -> None:
    # given: each follow-up of the type; then: the system may fire it from that state
    for (follow_type, state), trigger in FOLLOW_UPS.items():
        if follow_type is not case_type:
            continue
        rows = _groups(case_type).get((trigger, state), [])
        assert rows and all(Role.SYSTEM in row.actors for row in rows), (state, trigger)
        # and a follow-up never loops back into the state that fired it
        assert all(row.dest is not state for row in rows)


def test_every_timer_kind_has_a_policy_value_for_every_type(policy: Policy) -> None:
    # given: the timers of the table (refund_retry uses the retry backoff instead)
    kinds = {spec.kind for specs in TIMERS.values() for spec in specs} - {"refund_retry"}
    # then: the policy has a delay for each, for every case type
    for kind in kinds:
        for case_type in CaseType:
            assert policy.timer(kind, case_type.value).total_seconds() > 0


@pytest.mark.parametrize("case_type", list(CaseType))
def test_a_state_arms_at_most_one_timer_at_a_time(case_type: CaseType) -> None:
    # given: the specs of each state; then: for each flag value at most one applies
    for state, specs in TIMERS.items():
        for flag_value in (False, True):
            applying = [
                spec
                for spec in specs
                if case_type in spec.types and (spec.flag is None or spec.flag[1] is flag_value)
            ]
            assert len(applying) <= 1, (state, applying)


@pytest.mark.parametrize("case_type", list(CaseType))
def test_every_open_state_has_a_way_out_and_leads_to_an_end(case_type: CaseType) -> None:
    rows = rules_for(case_type)
    for state in states_for(case_type):
        if state in TERMINAL_STATES:
            continue
        # then: some row leaves the state ...
        assert any(state in row.sources and row.dest is not state for row in rows), state
        # ... and some terminal state can be reached from it
        seen, frontier = {state}, [state]
        while frontier:
            current = frontier.pop()
            for row in rows:
                if current in row.sources and row.dest not in seen:
                    seen.add(row.dest)
                    frontier.append(row.dest)
        assert seen & TERMINAL_STATES, state


@pytest.mark.parametrize("case_type", list(CaseType))
def test_every_open_state_leaves_without_an_admin(case_type: CaseType) -> None:
    """Buyers, merchants, carriers, the payment gateway or a timer move every open state on;
    only a dispute waits for the platform (RULES.md B: nothing waits unseen)."""
    # given: each open state but disputed; then: a non-admin row leaves it
    for state in states_for(case_type):
        if state in TERMINAL_STATES or state is CaseState.DISPUTED:
            continue
        non_admin = [
            row
            for row in rules_for(case_type)
            if state in row.sources and row.dest is not state and row.actors - {Role.ADMIN}
        ]
        assert non_admin, state


def test_terminal_states_have_no_outgoing_rows() -> None:
    # given: every row; then: none starts from a terminal state
    for rule in RULES:
        assert not set(rule.sources) & TERMINAL_STATES, rule


def test_reason_and_admin_trigger_sets_name_real_triggers() -> None:
    # given: the trigger sets; then: they name triggers of the table
    assert REASON_REQUIRED.issubset(TRIGGERS)
    assert ADMIN_FORCED.issubset(TRIGGERS)
    # the forced corrective transitions are admin rows from (almost) every open state
    for trigger in ADMIN_FORCED:
        assert any(rule.trigger == trigger and Role.ADMIN in rule.actors for rule in RULES)


@pytest.mark.parametrize("case_type", list(CaseType))
def test_machines_are_built_once_per_process_without_auto_transitions(
    case_type: CaseType,
) -> None:
    # when: asking for the machine twice
    first, second = engine.machine_for(case_type), engine.machine_for(case_type)
    # then: it is the same shared object, with no to_<state> shortcuts
    assert first is second
    assert first.auto_transitions is False
    assert not any(name.startswith("to_") for name in first.events)
    # and its events are exactly the triggers of the type
    assert set(first.events) == {rule.trigger for rule in rules_for(case_type)}
    assert set(first.states) == {s.value for s in states_for(case_type)}


def test_machines_of_different_types_are_distinct() -> None:
    # when: asking for each type's machine; then: four different machines
    machines = {id(engine.machine_for(case_type)) for case_type in CaseType}
    assert len(machines) == len(CaseType)
