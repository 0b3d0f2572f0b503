"""``GET /cases`` as the operations queue (search, deadline filters, sort, cursor) and
``GET /stats/merchants``, on SQLite and PostgreSQL (issue 16 items 3, 6 and 7)."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

import pytest

from .conftest import NOW, Api, problem


def _listed(api: Api, scope: str = "admin", **params: Any) -> list[int]:
    """The ids of every page of the list, following ``next_cursor``."""
    seen: list[int] = []
    while True:
        response = api.client.get("/cases", params=params, headers=api.auth(scope))
        assert response.status_code == 200, response.text
        page = response.json()
        seen += [case["id"] for case in page["cases"]]
        if page["next_cursor"] is None:
            return seen
        params = {**params, "cursor": page["next_cursor"]}


@pytest.fixture
def queue(api: Api) -> dict[str, int]:
    """At NOW + 48.5 h: ``late`` (m1, review due at 48 h, overdue), ``soon`` (m1, due at 49 h),
    ``approved`` (m2, shipped back with parcel SF100, due at 2 + 360 h), ``disputed`` (m2,
    rejected then escalated: no deadline)."""
    late = api.submit(order_id="o-late")
    api.clock.advance(timedelta(hours=1))
    soon = api.submit(order_id="o-soon")
    approved = api.submit(order_id="o-approved", merchant_id="m2", buyer_id="b2")
    api.fire(approved, "approve", "merchant:m2")
    api.clock.advance(timedelta(hours=1))
    api.fire(approved, "ship_back", "buyer:b2", data={"tracking_no": "SF100"})
    disputed = api.submit(order_id="o-disputed", merchant_id="m2", buyer_id="b2")
    api.fire(disputed, "reject", "merchant:m2", reason="worn")
    api.fire(disputed, "escalate", "buyer:b2")
    api.clock.set(NOW + timedelta(hours=48, minutes=30))
    return {"late": late, "soon": soon, "approved": approved, "disputed": disputed}


def test_the_overdue_queue_shows_the_deadline_and_who_it_waits_for(
    api: Api, queue: dict[str, int]
) -> None:
    # when an admin asks for the overdue cases by deadline
    response = api.client.get(
        "/cases", params={"overdue": "true", "sort": "deadline"}, headers=api.auth("admin")
    )

    # then only the case past its review deadline, waiting for its merchant
    assert response.status_code == 200, response.text
    [row] = response.json()["cases"]
    assert (row["id"], row["overdue"], row["waits_for"]) == (queue["late"], True, "merchant")
    assert datetime.fromisoformat(row["deadline"]["due_at"]) == NOW + timedelta(hours=48)
    assert response.json()["next_cursor"] is None
    assert datetime.fromisoformat(response.json()["as_of"]) == api.clock.now()


def test_deadline_filters_sort_and_search(api: Api, queue: dict[str, int]) -> None:
    late, soon, approved, disputed = queue.values()

    # then the queue sorts by deadline (the case without one last) either way, and filters
    assert _listed(api, sort="deadline") == [late, soon, approved, disputed]
    assert _listed(api, sort="deadline", order="desc") == [approved, soon, late, disputed]
    assert _listed(api, deadline_within_hours=1) == [late, soon]
    assert _listed(api, sort="age", order="desc") == [disputed, approved, soon, late]
    assert _listed(api, disputed="true") == [disputed]
    assert _listed(api, disputed="false", state=["submitted", "shipped_back"]) == [
        late, soon, approved,
    ]  # fmt: skip
    # search: a tracking number, an order id, a case id, a buyer id
    assert _listed(api, q="SF100") == [approved]
    assert _listed(api, q="o-soon") == [soon]
    assert _listed(api, q=str(disputed)) == [disputed]
    assert _listed(api, q="b2", type="return_refund") == [approved, disputed]


@pytest.mark.parametrize("limit", [1, 3])
def test_the_cursor_pages_through_every_case_once(
    api: Api, queue: dict[str, int], limit: int
) -> None:
    # when the queue is read a page at a time
    first = api.client.get(
        "/cases", params={"sort": "deadline", "limit": limit}, headers=api.auth("admin")
    )

    # then each page links the next by its cursor, and together they hold every case once
    assert first.json()["next_after"] is None
    assert "cursor=" in first.headers["link"]
    assert "sort=deadline" in first.headers["link"]
    every = _listed(api, sort="deadline", limit=limit)
    assert sorted(every) == sorted(queue.values())


def test_a_merchant_queue_holds_only_its_own_cases(api: Api, queue: dict[str, int]) -> None:
    # then m1 sees its two, its buyer b2 the two of m2, and naming someone else is refused
    assert _listed(api, "merchant:m1", sort="deadline") == [queue["late"], queue["soon"]]
    assert _listed(api, "buyer:b2", q="SF100") == [queue["approved"]]
    assert _listed(api, "buyer:b1", q="SF100") == []
    other = api.client.get("/cases", params={"merchant_id": "m2"}, headers=api.auth("merchant:m1"))
    problem(other, 403, "forbidden")


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"cursor": "not-a-cursor"}, "query.cursor"),
        ({"cursor": "eyJzIjoiaWQiLCJkIjpmYWxzZSwiayI6bnVsbCwiaSI6Mn0", "sort": "age"}, "cursor"),
        ({"after": 3, "sort": "deadline"}, "after"),
        ({"after": 3, "cursor": "eyJzIjoiaWQiLCJkIjpmYWxzZSwiayI6bnVsbCwiaSI6Mn0"}, "query.after"),
        ({"sort": "price"}, "query.sort"),
        ({"order": "up"}, "query.order"),
        ({"q": "x" * 101}, "query.q"),
        ({"q": "a\nb"}, "query.q"),
        ({"deadline_within_hours": -1}, "query.deadline_within_hours"),
        ({"overdue": "maybe"}, "query.overdue"),
    ],
)
def test_bad_queue_parameters_are_422_naming_the_field(
    api: Api, params: dict[str, Any], field: str
) -> None:
    response = api.client.get("/cases", params=params, headers=api.auth("admin"))
    assert problem(response, 422, "invalid-input")["field"] == field


def test_merchant_figures_over_a_period(api: Api, queue: dict[str, int]) -> None:
    # given m1's overdue review auto-approved by its timer, at NOW + 48.5 h
    api.cases.run_due_timers()
    period = {
        "from": (NOW - timedelta(days=1)).isoformat(),
        "to": (NOW + timedelta(days=3)).isoformat(),
    }

    # when an admin and a merchant read the figures
    admin = api.client.get("/stats/merchants", params=period, headers=api.auth("admin"))
    mine = api.client.get("/stats/merchants", params=period, headers=api.auth("merchant:m1"))

    # then m1: two cases, one reviewed (by the timeout, 48.5 h in), no dispute; m2: two cases,
    # both reviewed by the merchant at once, one disputed
    assert admin.status_code == 200, admin.text
    m1, m2 = admin.json()["merchants"]
    assert m1 == {
        "merchant_id": "m1",
        "cases": 2,
        "reviewed": 1,
        "median_review_seconds": 48.5 * 3600,
        "timed_out": 1,
        "timeout_share": 0.5,
        "disputed": 0,
        "dispute_rate": 0.0,
    }
    assert (m2["merchant_id"], m2["cases"], m2["reviewed"]) == ("m2", 2, 2)
    assert (m2["median_review_seconds"], m2["dispute_rate"], m2["timed_out"]) == (0, 0.5, 0)
    assert mine.json()["merchants"] == [m1]


def test_merchant_figures_refuse_others_and_bad_periods(api: Api) -> None:
    at = NOW.isoformat()
    naive = "2026-11-20T10:00:00"
    stats = "/stats/merchants"
    problem(
        api.client.get(stats, params={"merchant_id": "m2"}, headers=api.auth("merchant:m1")),
        403,
        "forbidden",
    )
    problem(api.client.get(stats, headers=api.auth("buyer:b1")), 403, "forbidden")
    bad = api.client.get(stats, params={"from": naive}, headers=api.auth("admin"))
    assert problem(bad, 422, "invalid-input")["field"] == "query.from"
    # a number is no time (pydantic would read it as seconds since 1970; schemathesis did)
    for number in ("0.5", "1700000000", "-1e3", "2026"):
        numeric = api.client.get(stats, params={"to": number}, headers=api.auth("admin"))
        assert problem(numeric, 422, "invalid-input")["field"] == "query.to", number
    backwards = api.client.get(stats, params={"from": at, "to": at}, headers=api.auth("admin"))
    assert problem(backwards, 422, "invalid-input")["field"] == "to"
    long = {"from": (NOW - timedelta(days=400)).isoformat(), "to": at}
    problem(api.client.get(stats, params=long, headers=api.auth("admin")), 422, "invalid-input")
    # no cases in the default period: an empty list
    empty = api.client.get(stats, headers=api.auth("admin"))
    assert empty.status_code == 200
    assert empty.json()["merchants"] == []
