"""The full transition matrix: every resting state x every trigger x every role, per case type.

The expectation is written out below by hand from RULES.md (A.1 flow, part B conventions), NOT
derived from ``definitions.RULES``. Each row reads ``state trigger role -> destination``; a fifth
column names the automatic follow-ups fired on the way (``via``). Any (state, trigger, role) not in
the table must raise ``NotAllowed`` listing exactly the triggers the table allows that role there.

The setups (``builders.PATHS``) bring a case to each state through legal triggers; a state label
with a bracket is a variant of the state (``disputed(goods_back)``: the merchant holds the goods).
"""

from __future__ import annotations

import copy
from functools import cache

import pytest

from config.policy import load_policy
from workflow.clock import FakeClock
from workflow.definitions import states_for
from workflow.errors import Forbidden, NotAllowed
from workflow.memory import InMemoryDatabase, InMemoryUnitOfWorkFactory
from workflow.model import Actor
from workflow.service import CaseService
from workflow.states import TERMINAL_STATES, CaseState, CaseType, Role

from .builders import (
    ACTORS,
    NOW,
    OTHER_BUYER,
    OTHER_MERCHANT,
    PATHS,
    REASON,
    data_for,
    state_of,
    submit_in,
)

#: Every trigger name of the service (RULES.md A.1 and part B), written out.
TRIGGERS = (
    # review, withdrawal, rejection
    *("approve", "auto_approve", "reject", "cancel", "revise", "escalate", "expire_dispute_window"),
    # return leg
    *("book_pickup", "ship_back", "record_pickup", "expire_return", "record_return_delivery"),
    *("confirm_receipt", "auto_receive", "inspect", "deem_inspected", "fail_inspection"),
    # outcomes
    *("start_refund", "convert_to_refund", "ship_replacement", "ship_repaired"),
    *("record_buyer_delivery", "confirm_delivery", "auto_confirm_delivery"),
    # refund execution
    *("confirm_refund", "fail_refund", "retry_refund", "switch_to_bank_transfer"),
    *("provide_bank_account", "remind_bank_account"),
    # carrier incidents, platform rulings and corrections
    *("report_parcel_lost", "report_parcel_damaged", "rule_for_buyer", "rule_for_merchant"),
    *("force_close", "force_refund"),
)
ROLES = tuple(Role)

# -- the expectation ----------------------------------------------------------------------------

_REVIEW = """
submitted   approve                 merchant  approved
submitted   auto_approve            system    approved
submitted   reject                  merchant  rejected
submitted   cancel                  buyer     cancelled
submitted   escalate                admin     disputed
submitted   force_close             admin     closed
submitted   force_refund            admin     refunding
rejected    revise                  buyer     submitted
rejected    escalate                buyer     disputed
rejected    expire_dispute_window   system    closed
rejected    cancel                  buyer     cancelled
rejected    escalate                admin     disputed
rejected    force_close             admin     closed
rejected    force_refund            admin     refunding
disputed    cancel                  buyer     cancelled
disputed    rule_for_buyer          admin     approved
disputed    rule_for_merchant       admin     closed
disputed    force_close             admin     closed
disputed    force_refund            admin     refunding
"""

# A.1 steps 3-5: pickup information, the buyer ships with a tracking number, the merchant receives.
_RETURN_LEG = """
approved          book_pickup             system    pickup
approved          ship_back               buyer     shipped_back
approved          record_pickup           carrier   shipped_back
approved          expire_return           system    closed
approved          cancel                  buyer     cancelled
approved          escalate                admin     disputed
approved          force_close             admin     closed
approved          force_refund            admin     refunding
pickup            ship_back               buyer     shipped_back
pickup            record_pickup           carrier   shipped_back
pickup            expire_return           system    closed
pickup            cancel                  buyer     cancelled
pickup            escalate                admin     disputed
pickup            force_close             admin     closed
pickup            force_refund            admin     refunding
shipped_back      record_return_delivery  carrier   return_delivered
shipped_back      confirm_receipt         merchant  received
shipped_back      report_parcel_lost      carrier   disputed
shipped_back      report_parcel_damaged   carrier   disputed
shipped_back      escalate                system    disputed
shipped_back      escalate                admin     disputed
shipped_back      force_close             admin     closed
shipped_back      force_refund            admin     refunding
return_delivered  confirm_receipt         merchant  received
return_delivered  escalate                admin     disputed
return_delivered  force_close             admin     closed
return_delivered  force_refund            admin     refunding
received          fail_inspection         merchant  rejected
received          escalate                admin     disputed
received          force_close             admin     closed
received          force_refund            admin     refunding
disputed(goods_back)  cancel              buyer     cancelled
disputed(goods_back)  rule_for_merchant   admin     closed
disputed(goods_back)  force_close         admin     closed
disputed(goods_back)  force_refund        admin     refunding
"""

# A.4 and B: refund to the original channel, bank transfer past its window, refunds execute once.
_REFUND = """
refunding              confirm_refund           payment  refunded
refunding              fail_refund              payment  refund_failed
refunding              escalate                 admin    disputed
refunding              force_close              admin    closed
refund_failed          retry_refund             system   refunding
refund_failed          retry_refund             admin    refunding
refund_failed          switch_to_bank_transfer  admin    awaiting_bank_account
refund_failed          escalate                 admin    disputed
refund_failed          force_close              admin    closed
refund_failed          force_refund             admin    refunding
awaiting_bank_account  provide_bank_account     buyer    refunding
awaiting_bank_account  remind_bank_account      system   awaiting_bank_account
awaiting_bank_account  escalate                 system   disputed
awaiting_bank_account  escalate                 admin    disputed
awaiting_bank_account  force_close              admin    closed
"""

# Exchange and repair: after inspection the goods go out again (A.1 step 5, A.5); the receipt
# timeout deems the goods received and inspected (B), the replacement or repair comes next.
_OUTBOUND = """
return_delivered    auto_receive            system    inspected
received            inspect                 merchant  inspected
received            deem_inspected          system    inspected
inspected           convert_to_refund       merchant  refunding
inspected           convert_to_refund       system    refunding
inspected           {ship}                  merchant  shipped_to_buyer
inspected           escalate                system    disputed
inspected           escalate                admin     disputed
inspected           force_close             admin     closed
inspected           force_refund            admin     refunding
shipped_to_buyer    record_buyer_delivery   carrier   delivered_to_buyer
shipped_to_buyer    confirm_delivery        buyer     {done}
shipped_to_buyer    report_parcel_lost      carrier   disputed
shipped_to_buyer    report_parcel_damaged   carrier   disputed
shipped_to_buyer    escalate                system    disputed
shipped_to_buyer    escalate                admin     disputed
shipped_to_buyer    force_close             admin     closed
shipped_to_buyer    force_refund            admin     refunding
delivered_to_buyer  confirm_delivery        buyer     {done}
delivered_to_buyer  auto_confirm_delivery   system    {done}
delivered_to_buyer  escalate                admin     disputed
delivered_to_buyer  force_close             admin     closed
delivered_to_buyer  force_refund            admin     refunding
disputed(goods_back)  rule_for_buyer        admin     inspected
"""

# Return-and-refund: an inspection (or a ruling once the goods are back) starts the refund at once;
# so does the receipt timeout (B: auto-receive, proceed to refund), with the inspection deemed.
_RETURN_REFUND_OUTCOME = """
return_delivered      auto_receive     system    refunding  start_refund
received              inspect          merchant  refunding  start_refund
received              deem_inspected   system    refunding  start_refund
disputed(goods_back)  rule_for_buyer   admin     refunding  start_refund
"""

# Refund-only: no return leg; an approval (or a ruling for the buyer) starts the refund at once.
# RULES.md C: on delivered goods (the default application: damaged in transit) only the merchant's
# approval is consent; its deadline (merchant_consent) escalates to the platform, and an
# auto-approval, should one fire, is routed there too. Goods not received are auto-approved.
_REFUND_ONLY_REVIEW = """
submitted                 approve                merchant  refunding  start_refund
submitted                 auto_approve           system    disputed
submitted                 reject                 merchant  rejected
submitted                 cancel                 buyer     cancelled
submitted                 escalate               system    disputed
submitted                 escalate               admin     disputed
submitted                 force_close            admin     closed
submitted                 force_refund           admin     refunding
submitted(not_received)   approve                merchant  refunding  start_refund
submitted(not_received)   auto_approve           system    refunding  start_refund
submitted(not_received)   reject                 merchant  rejected
submitted(not_received)   cancel                 buyer     cancelled
submitted(not_received)   escalate               system    disputed
submitted(not_received)   escalate               admin     disputed
submitted(not_received)   force_close            admin     closed
submitted(not_received)   force_refund           admin     refunding
rejected    revise                  buyer     submitted
rejected    escalate                buyer     disputed
rejected    expire_dispute_window   system    closed
rejected    cancel                  buyer     cancelled
rejected    escalate                admin     disputed
rejected    force_close             admin     closed
rejected    force_refund            admin     refunding
disputed    cancel                  buyer     cancelled
disputed    rule_for_buyer          admin     refunding  start_refund
disputed    rule_for_merchant       admin     closed
disputed    force_close             admin     closed
disputed    force_refund            admin     refunding
"""

Cell = tuple[str, str, Role]
Expectation = tuple[CaseState, tuple[str, ...]]


def _parse(*blocks: str) -> dict[Cell, Expectation]:
    table: dict[Cell, Expectation] = {}
    for block in blocks:
        for line in block.strip().splitlines():
            label, trigger, role, dest, *via = line.split()
            cell = (label, trigger, Role(role))
            assert cell not in table, f"row written twice: {line}"
            assert trigger in TRIGGERS, f"unknown trigger in the table: {line}"
            table[cell] = (CaseState(dest), tuple(via))
    return table


EXPECTED: dict[CaseType, dict[Cell, Expectation]] = {
    CaseType.RETURN_REFUND: _parse(_REVIEW, _RETURN_LEG, _RETURN_REFUND_OUTCOME, _REFUND),
    CaseType.EXCHANGE: _parse(
        _REVIEW, _RETURN_LEG, _OUTBOUND.format(ship="ship_replacement", done="exchanged"), _REFUND
    ),
    CaseType.REPAIR: _parse(
        _REVIEW, _RETURN_LEG, _OUTBOUND.format(ship="ship_repaired", done="repaired"), _REFUND
    ),
    CaseType.REFUND_ONLY: _parse(_REFUND_ONLY_REVIEW, _REFUND),
}

#: States a type passes through but never rests in (an automatic follow-up leaves them at once).
TRANSIENT: dict[CaseType, set[CaseState]] = {
    CaseType.RETURN_REFUND: {CaseState.INSPECTED},
    CaseType.EXCHANGE: set(),
    CaseType.REPAIR: set(),
    CaseType.REFUND_ONLY: {CaseState.APPROVED},
}


def _cells(case_type: CaseType) -> list[tuple[str, str]]:
    """(state label, trigger) pairs; each is checked for every role."""
    return [(label, trigger) for label in PATHS[case_type] for trigger in TRIGGERS]


# -- set-up: one prepared storage per (type, state label), copied for every cell ---------------

_POLICY = load_policy()


@cache
def _prepared(case_type: CaseType, label: str) -> tuple[InMemoryDatabase, int]:
    factory = InMemoryUnitOfWorkFactory()
    case_id = submit_in(CaseService(factory, FakeClock(NOW), _POLICY), case_type, label)
    return factory.db, case_id


def _service_in(case_type: CaseType, label: str) -> tuple[CaseService, InMemoryDatabase, int]:
    """A service over a private copy of the prepared storage, its storage, and the case id."""
    db, case_id = _prepared(case_type, label)
    factory = InMemoryUnitOfWorkFactory(copy.deepcopy(db))
    return CaseService(factory, FakeClock(NOW), _POLICY), factory.db, case_id


def _allowed_in_table(case_type: CaseType, label: str, role: Role) -> set[str]:
    return {t for (lab, t, r) in EXPECTED[case_type] if lab == label and r is role}


def _check_role(
    case_type: CaseType,
    label: str,
    trigger: str,
    role: Role,
    env: tuple[CaseService, InMemoryDatabase, int],
) -> None:
    # given: a case of this type resting in the labelled state
    service, db, case_id = env
    before = copy.deepcopy(db.cases[case_id])
    log_before = list(db.log[case_id])
    assert before.state is state_of(label)
    actor = ACTORS[role]
    expected = EXPECTED[case_type].get((label, trigger, role))

    if expected is not None:
        dest, via = expected
        # when: the role fires the trigger (with its data, and a reason)
        result = service.fire(case_id, trigger, actor, data=data_for(trigger), reason=REASON)
        # then: it lands where the table says, through exactly the listed follow-ups
        assert [r.trigger for r in result.records] == [trigger, *via]
        assert result.records[0].from_state is before.state
        assert result.case.state is dest
        stored = db.cases[case_id]
        assert stored.state is dest
        assert stored.version == before.version + 1 + len(via)
        assert len(db.log[case_id]) == len(log_before) + 1 + len(via)
    else:
        # when: a trigger the table does not allow this role here
        with pytest.raises(NotAllowed) as refused:
            service.fire(case_id, trigger, actor, data=data_for(trigger), reason=REASON)
        # then: the refusal lists what this actor may do instead, and nothing changed
        assert refused.value.allowed == service.allowed_triggers(case_id, actor)
        assert set(refused.value.allowed) == _allowed_in_table(case_type, label, role)
        after = db.cases[case_id]
        assert (after.state, after.version) == (before.state, before.version)
        assert db.log[case_id] == log_before


def _check_cell(case_type: CaseType, label: str, trigger: str) -> None:
    """One (state, trigger) row of the matrix, for every role; reports every failing role."""
    failures = []
    env = None
    for role in ROLES:
        # a refused trigger changes nothing, so the next role may reuse the same storage
        if env is None:
            env = _service_in(case_type, label)
        try:
            _check_role(case_type, label, trigger, role, env)
        except AssertionError as error:
            failures.append(f"{role.value}: {error}")
        except Exception as error:  # an unexpected error type is a failure of this cell too
            failures.append(f"{role.value}: {type(error).__name__}: {error}")
        if (label, trigger, role) in EXPECTED[case_type]:
            env = None
    assert not failures, f"{case_type.value} {label} {trigger}\n" + "\n".join(failures)


@pytest.mark.parametrize(("label", "trigger"), _cells(CaseType.RETURN_REFUND))
def test_return_refund_matrix(label: str, trigger: str) -> None:
    _check_cell(CaseType.RETURN_REFUND, label, trigger)


@pytest.mark.parametrize(("label", "trigger"), _cells(CaseType.EXCHANGE))
def test_exchange_matrix(label: str, trigger: str) -> None:
    _check_cell(CaseType.EXCHANGE, label, trigger)


@pytest.mark.parametrize(("label", "trigger"), _cells(CaseType.REPAIR))
def test_repair_matrix(label: str, trigger: str) -> None:
    _check_cell(CaseType.REPAIR, label, trigger)


@pytest.mark.parametrize(("label", "trigger"), _cells(CaseType.REFUND_ONLY))
def test_refund_only_matrix(label: str, trigger: str) -> None:
    _check_cell(CaseType.REFUND_ONLY, label, trigger)


# -- the matrix covers everything -----------------------------------------------------------


@pytest.mark.parametrize("case_type", list(CaseType))
def test_setups_cover_every_state_the_type_can_rest_in(case_type: CaseType) -> None:
    # given: the state labels the matrix is run for
    covered = {state_of(label) for label in PATHS[case_type]}
    # then: together with the transient states they are exactly the reachable states
    assert covered | TRANSIENT[case_type] == set(states_for(case_type))
    assert not covered & TRANSIENT[case_type]


@pytest.mark.parametrize("case_type", list(CaseType))
def test_table_rows_start_from_resting_states_only(case_type: CaseType) -> None:
    # given: the hand-written table; then: every row starts from a state the matrix sets up,
    # never from a terminal one
    labels = {label for (label, _, _) in EXPECTED[case_type]}
    assert labels <= set(PATHS[case_type])
    assert not {state_of(label) for label in labels} & TERMINAL_STATES


def test_the_trigger_list_is_the_service_vocabulary() -> None:
    # given: the trigger names written in this file; then: the service knows exactly these
    from workflow.definitions import TRIGGERS as known

    assert set(TRIGGERS) == set(known)


# -- ownership (A.8: a buyer or merchant sees and acts only on its own cases) ------------------


def _labels() -> list[tuple[CaseType, str]]:
    return [(case_type, label) for case_type in CaseType for label in PATHS[case_type]]


@pytest.mark.parametrize(("case_type", "label"), _labels())
@pytest.mark.parametrize("intruder", [OTHER_BUYER, OTHER_MERCHANT], ids=str)
def test_acting_on_another_owners_case_is_forbidden_and_changes_nothing(
    case_type: CaseType, label: str, intruder: Actor
) -> None:
    # given: b1's case at m1, in this state
    service, _, case_id = _service_in(case_type, label)
    before = service.get(case_id)
    log_before = service.history(case_id)
    # when: another buyer / merchant fires any trigger or reads the case
    for trigger in TRIGGERS:
        with pytest.raises(Forbidden):
            service.fire(case_id, trigger, intruder, data=data_for(trigger), reason=REASON)
    for read in (service.get, service.history, service.allowed_triggers):
        with pytest.raises(Forbidden):
            read(case_id, intruder)
    # then: nothing changed: same state, version, log and deadline
    after = service.get(case_id)
    assert (after.case.state, after.case.version) == (before.case.state, before.case.version)
    assert service.history(case_id) == log_before
    assert after.deadline == before.deadline
