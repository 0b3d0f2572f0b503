"""The case queue's domain side: who a case waits for, the cursor, and ``CaseService.search`` /
``merchant_figures`` narrowing to what the actor may see (in-memory stores, fake clock)."""

from __future__ import annotations

import base64
import json
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from workflow.clock import FakeClock
from workflow.definitions import OPEN_STATES, TIMER_SPECS
from workflow.errors import Forbidden, InvalidInput
from workflow.model import Actor
from workflow.queries import (
    MERCHANT_TIMEOUTS,
    STATE_WAITS_FOR,
    TIMER_WAITS_FOR,
    CaseQuery,
    CaseSort,
    Cursor,
    Party,
    waiting_for,
)
from workflow.service import CaseService
from workflow.states import TERMINAL_STATES, CaseState, Role

from .builders import ADMIN, BUYER, CARRIER, MERCHANT, submit_with_order

MakeApp = Callable[..., dict[str, Any]]


def test_every_open_state_and_every_timer_says_whom_it_waits_for() -> None:
    assert set(STATE_WAITS_FOR) == set(OPEN_STATES)
    assert set(TIMER_WAITS_FOR) == set(TIMER_SPECS)
    # the deadlines binding the merchant are its timeouts, and those of its silence too (the
    # consent a refund_only needs, a repair it does not finish)
    binding = {kind for kind, spec in TIMER_SPECS.items() if spec.binds is Role.MERCHANT}
    assert binding | {"merchant_consent", "repair_completion"} == MERCHANT_TIMEOUTS


def test_a_case_waits_for_its_deadlines_party_else_its_states(
    service: CaseService, make_app: MakeApp
) -> None:
    # given a submitted case (its review deadline armed), approved, then ended
    case_id = submit_with_order(service, make_app()).case.id or 0
    view = service.get(case_id)
    assert waiting_for(view.case, view.deadline) is Party.MERCHANT
    service.fire(case_id, "approve", MERCHANT)
    view = service.get(case_id)
    assert waiting_for(view.case, view.deadline) is Party.BUYER
    # without its deadline, an approved case still waits for the buyer's parcel
    assert waiting_for(view.case, None) is Party.BUYER
    service.fire(case_id, "cancel", BUYER)
    view = service.get(case_id)
    assert view.case.state in TERMINAL_STATES
    assert waiting_for(view.case, view.deadline) is None


@pytest.mark.parametrize(
    "cursor",
    [
        Cursor(CaseSort.ID, False, None, 7),
        Cursor(CaseSort.DEADLINE, True, datetime(2026, 12, 7, 1, 2, 3, 456, tzinfo=UTC), 9),
        Cursor(CaseSort.DEADLINE, False, None, 2**62),
        Cursor(CaseSort.AGE, True, datetime(2026, 1, 1, tzinfo=UTC), 1),
    ],
)
def test_a_cursor_survives_its_text(cursor: Cursor) -> None:
    text = cursor.encode()
    assert text.replace("-", "").replace("_", "").isalnum()
    assert Cursor.decode(text) == cursor


def _text(data: object) -> str:
    return base64.urlsafe_b64encode(json.dumps(data).encode()).decode().rstrip("=")


@pytest.mark.parametrize(
    "text",
    [
        "",
        "!!!",
        "bm90IGpzb24",  # "not json"
        _text([1, 2]),
        _text({"s": "price", "d": False, "k": None, "i": 1}),
        _text({"s": "id", "d": "no", "k": None, "i": 1}),
        _text({"s": "id", "d": False, "k": None, "i": "1"}),
        _text({"s": "id", "d": False, "k": None, "i": -1}),
        _text({"s": "id", "d": False, "k": "2026-12-07T00:00:00+00:00", "i": 1}),
        _text({"s": "age", "d": False, "k": None, "i": 1}),
        _text({"s": "deadline", "d": False, "k": "2026-12-07T00:00:00", "i": 1}),
        _text({"s": "deadline", "d": False, "k": "yesterday", "i": 1}),
    ],
)
def test_a_cursor_that_this_service_did_not_write_is_refused(text: str) -> None:
    with pytest.raises(ValueError, match="not a cursor"):
        Cursor.decode(text)


def test_search_shows_each_party_its_own_cases(service: CaseService, make_app: MakeApp) -> None:
    # given b1's case at m1 and b2's case at m2
    mine = submit_with_order(service, make_app()).case.id
    theirs = submit_with_order(
        service, make_app(order_id="o2", buyer_id="b2", merchant_id="m2")
    ).case.id

    def ids(actor: Actor | None, **fields: Any) -> list[int | None]:
        return [row.case.id for row in service.search(CaseQuery(**fields), actor).rows]

    # then each party finds its own, an admin both, and naming someone else is refused
    assert ids(BUYER) == [mine]
    assert ids(MERCHANT, text="o2") == []
    assert ids(ADMIN) == [mine, theirs]
    assert ids(None, merchant_id="m2") == [theirs]
    with pytest.raises(Forbidden):
        ids(BUYER, buyer_id="b2")
    with pytest.raises(Forbidden):
        ids(MERCHANT, merchant_id="m2")
    with pytest.raises(Forbidden):
        ids(CARRIER)


def test_search_pages_end_with_a_cursor_and_count_overdue_from_the_clock(
    service: CaseService, make_app: MakeApp, clock: FakeClock
) -> None:
    # given three cases submitted an hour apart, read 49 h after the first
    ids = []
    for n in range(3):
        ids.append(submit_with_order(service, make_app(order_id=f"o{n}")).case.id)
        clock.advance(timedelta(hours=1))
    clock.advance(timedelta(hours=46))
    query = CaseQuery(overdue=True, sort=CaseSort.DEADLINE, limit=1)

    # when the overdue queue is read a case at a time
    first = service.search(query, ADMIN)
    assert first.next is not None
    second = service.search(CaseQuery(**{**query.__dict__, "after": first.next}), ADMIN)

    # then the two past their 48 h review come one per page, overdue as of the clock
    assert [row.case.id for row in first.rows + second.rows] == ids[:2]
    assert first.as_of == clock.now()
    assert first.rows[0].overdue(first.as_of)
    assert second.next is None


@pytest.mark.parametrize(
    ("query", "field"),
    [
        (CaseQuery(limit=0), "limit"),
        (CaseQuery(limit=501), "limit"),
        (CaseQuery(sort=CaseSort.AGE, after=Cursor(CaseSort.ID, False, None, 1)), "cursor"),
        (CaseQuery(descending=True, after=Cursor(CaseSort.ID, False, None, 1)), "cursor"),
        (CaseQuery(sort=CaseSort.DEADLINE, after_id=3), "after"),
        (CaseQuery(due_within=timedelta(hours=-1)), "deadline_within_hours"),
    ],
)
def test_a_query_out_of_bounds_is_invalid_input(
    service: CaseService, query: CaseQuery, field: str
) -> None:
    with pytest.raises(InvalidInput) as refused:
        service.search(query, ADMIN)
    assert refused.value.field == field


def test_the_figures_are_an_admins_or_the_merchants_own(
    service: CaseService, make_app: MakeApp, clock: FakeClock
) -> None:
    # given a case at m1 and one at m2
    submit_with_order(service, make_app())
    submit_with_order(service, make_app(order_id="o2", buyer_id="b2", merchant_id="m2"))
    start, end = clock.now() - timedelta(days=1), clock.now() + timedelta(days=1)

    # then an admin sees both, m1 its own, and others nothing
    assert [f.merchant_id for f in service.merchant_figures(start, end, ADMIN)] == ["m1", "m2"]
    assert [f.merchant_id for f in service.merchant_figures(start, end, MERCHANT)] == ["m1"]
    with pytest.raises(Forbidden):
        service.merchant_figures(start, end, MERCHANT, merchant_id="m2")
    with pytest.raises(Forbidden):
        service.merchant_figures(start, end, BUYER)
    with pytest.raises(InvalidInput):
        service.merchant_figures(end, start, ADMIN)
    with pytest.raises(InvalidInput):
        service.merchant_figures(end - timedelta(days=400), end, ADMIN)


def test_states_given_one_way_or_the_other_are_either_of_them() -> None:
    query = CaseQuery(state=CaseState.SUBMITTED, states=frozenset({CaseState.APPROVED}))
    assert query.wanted_states() == {CaseState.SUBMITTED, CaseState.APPROVED}
    assert CaseQuery(text="0012").text_id() == 12
    assert CaseQuery(text="١٢").text_id() is None  # Arabic-Indic digits are no case id
    assert CaseQuery(text="9" * 19).text_id() is None
