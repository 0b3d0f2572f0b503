"""``/orders``: the order system or an admin imports orders of record; their parties read them.

The authorization matrix: admins and producer tokens of a source of kind ``orders`` import; the
order's buyer, its merchant and admins read; anyone else is told the order does not exist.
"""

from __future__ import annotations

from typing import Any

import pytest

from .conftest import Api, problem


def order(order_id: str = "o-7", **overrides: Any) -> dict[str, Any]:
    """b1's order at m1: two ¥199 shirts and a gift, paid 2026-11-15, delivered 2026-11-18."""
    base: dict[str, Any] = {
        "order_id": order_id,
        "buyer_id": "b1",
        "merchant_id": "m1",
        "payment": {
            "channel": "wechat_pay",
            "amount": 39800,
            "paid_at": "2026-11-15T10:00:00+08:00",
        },
        "delivered_at": "2026-11-18T15:00:00+08:00",
        "lines": [{"sku": "shirt", "quantity": 2, "unit_price": 19900, "category": "clothing"}],
        "gifts": [{"sku": "socks", "quantity": 1, "value": 500}],
    }
    return {**base, **overrides}


IMPORTERS = {
    "admin": True,
    "producer:order-system": True,
    "producer:sf-express": False,
    "producer:wechat-pay": False,
    "buyer:b1": False,
    "merchant:m1": False,
}


@pytest.mark.parametrize(("scope", "allowed"), IMPORTERS.items(), ids=list(IMPORTERS))
def test_only_admins_and_the_order_system_import_orders(
    api: Api, scope: str, allowed: bool
) -> None:
    # given a caller of some role
    # when it posts an order
    response = api.client.post("/orders", json=[order()], headers=api.auth(scope))
    # then an admin or the order system imports it; anyone else is 403 and nothing is stored
    if allowed:
        assert response.status_code == 200, response.text
        assert response.json() == {"imported": 1, "updated": 0, "refused": []}
    else:
        problem(response, 403, "forbidden")
        missing = api.client.get("/orders/o-7", headers=api.auth("admin"))
        problem(missing, 404, "not-found")


READERS = {
    "admin": 200,
    "buyer:b1": 200,
    "merchant:m1": 200,
    "buyer:b2": 404,
    "merchant:m2": 404,
    "producer:order-system": 404,
    "producer:sf-express": 404,
}


@pytest.mark.parametrize(("scope", "status"), READERS.items(), ids=list(READERS))
def test_an_order_is_read_by_its_parties_and_missing_to_anyone_else(
    api: Api, scope: str, status: int
) -> None:
    # given b1's order at m1
    imported = api.client.post("/orders", json=[order()], headers=api.auth("admin"))
    assert imported.status_code == 200, imported.text
    # when a caller reads it, and an order that does not exist
    response = api.client.get("/orders/o-7", headers=api.auth(scope))
    missing = api.client.get("/orders/o-404", headers=api.auth(scope))
    # then its parties see it; to anyone else it is exactly as missing as a missing one
    problem(missing, 404, "not-found")
    if status == 200:
        assert response.status_code == 200, response.text
        assert response.json()["order_id"] == "o-7"
    else:
        body = problem(response, 404, "not-found")
        assert body["detail"].replace("o-7", "X") == missing.json()["detail"].replace("o-404", "X")


def test_the_account_gives_per_line_quantities_and_what_is_refundable(api: Api) -> None:
    # given an imported order
    api.client.post("/orders", json=[order()], headers=api.auth("admin"))
    # when its buyer reads it
    shown = api.client.get("/orders/o-7", headers=api.auth("buyer:b1")).json()
    # then each line and the order carry their account
    assert shown["lines"] == [
        {
            "sku": "shirt",
            "category": "clothing",
            "unit_price": 19900,
            "quantity": 2,
            "open_quantity": 0,
            "refunded_quantity": 0,
            "refunded_amount": 0,
        }
    ]
    assert (shown["paid"], shown["refunded"], shown["refundable"]) == (39800, 0, 39800)
    assert shown["gifts"] == [{"sku": "socks", "quantity": 1, "value": 500}]


def test_a_batch_upserts_and_refuses_each_order_on_its_own(api: Api) -> None:
    # given an order imported before its delivery
    admin = api.auth("admin")
    api.client.post("/orders", json=[order(delivered_at=None)], headers=admin)
    # when a batch brings its delivery, a new order and a changed price
    cheaper = [{"sku": "shirt", "quantity": 2, "unit_price": 1, "category": "clothing"}]
    batch = [order(), order("o-8"), order("o-8", lines=cheaper)]
    response = api.client.post("/orders", json=batch, headers=admin)
    # then the good ones are written and each refusal names its index and reason
    assert response.status_code == 200, response.text
    body = response.json()
    assert (body["imported"], body["updated"]) == (1, 1)
    assert [(r["index"], r["order_id"]) for r in body["refused"]] == [(3, "o-8")]
    shown = api.client.get("/orders/o-8", headers=admin).json()
    assert shown["lines"][0]["unit_price"] == 19900
    delivered = api.client.get("/orders/o-7", headers=admin).json()["delivered_at"]
    assert delivered is not None


def test_a_category_the_policy_does_not_know_refuses_the_batch(api: Api) -> None:
    # given a batch whose second order has a line of a category the document does not list
    rocks = [{"sku": "x", "quantity": 1, "unit_price": 1, "category": "rocks"}]
    batch = [order("o-8"), order("o-9", lines=rocks)]
    # when it is sent
    response = api.client.post("/orders", json=batch, headers=api.auth("admin"))
    # then the whole batch is refused naming the field, and nothing is imported
    assert problem(response, 422, "invalid-input")["field"] == "body.1.lines.0.category"
    problem(api.client.get("/orders/o-8", headers=api.auth("admin")), 404, "not-found")


@pytest.mark.parametrize("field", ["delivered_at", "paid_at"])
def test_a_time_given_as_a_number_is_refused(api: Api, field: str) -> None:
    # given an order whose time is a number (pydantic would have read it as 1970 + seconds)
    document = order()
    if field == "paid_at":
        document["payment"]["paid_at"] = 0
    else:
        document["delivered_at"] = 0
    # when it is imported, then the batch is refused naming the field
    response = api.client.post("/orders", json=[document], headers=api.auth("admin"))
    assert problem(response, 422, "invalid-input")["field"].endswith(field)


@pytest.mark.parametrize("body", [{}, [], "o-7", None], ids=["object", "empty", "text", "null"])
def test_a_body_that_is_not_a_batch_is_refused(api: Api, body: Any) -> None:
    response = api.client.post("/orders", json=body, headers=api.auth("admin"))
    problem(response, 422, "invalid-input")


def test_a_batch_over_the_limit_is_refused_whole(api: Api) -> None:
    batch = [order(f"o-{n}") for n in range(api.app.state.api.settings.max_batch + 1)]
    response = api.client.post("/orders", json=batch, headers=api.auth("admin"))
    problem(response, 422, "invalid-input")
    problem(api.client.get("/orders/o-0", headers=api.auth("admin")), 404, "not-found")


def test_without_a_token_orders_are_401(api: Api) -> None:
    assert api.client.get("/orders/o-7").status_code == 401
    assert api.client.post("/orders", json=[order()]).status_code == 401


@pytest.mark.parametrize(
    ("bad", "field"),
    [
        (
            {"payment": {"channel": "x", "amount": 10**20, "paid_at": "2026-11-15T10:00:00Z"}},
            "body.1.payment.amount",
        ),
        ({"delivered_at": "2026-11-18T15:00:00"}, "body.1.delivered_at"),
        ({"delivered_at": "0001-01-01T00:00:00+14:00"}, "body.1.delivered_at"),
        ({"lines": []}, "body.1.lines"),
        ({"colour": "red"}, "body.1.colour"),
    ],
    ids=["amount-too-large", "naive-time", "year-one", "no-lines", "unknown-key"],
)
def test_a_document_that_is_not_an_order_refuses_the_batch(
    api: Api, bad: dict[str, Any], field: str
) -> None:
    # when a batch holds a good order and one that is not an order at all
    response = api.client.post(
        "/orders", json=[order(), order("o-8", **bad)], headers=api.auth("admin")
    )
    # then the whole batch is 422 naming the field, and nothing is imported
    assert problem(response, 422, "invalid-input")["field"] == field
    problem(api.client.get("/orders/o-7", headers=api.auth("admin")), 404, "not-found")


def test_the_order_system_places_and_delivers_orders_by_events(api: Api) -> None:
    # given the order system's events: an order placed, then delivered
    placed = {
        "event_id": "os-1",
        "source": "order-system",
        "type": "order.placed",
        "occurred_at": "2026-11-15T10:00:00+08:00",
        "order_id": "o-7",
        "data": order(delivered_at=None),
    }
    delivered = {
        "event_id": "os-2",
        "source": "order-system",
        "type": "order.delivered",
        "occurred_at": "2026-11-18T15:00:00+08:00",
        "order_id": "o-7",
    }
    # when a carrier's token sends one, and the order system's token sends both
    carrier = api.client.post("/events", json=placed, headers=api.auth("producer:sf-express"))
    sent = api.client.post(
        "/events", json=[placed, delivered], headers=api.auth("producer:order-system")
    )
    # then only the order system's apply, and the order is delivered
    problem(carrier, 403, "forbidden")
    assert sent.status_code == 202, sent.text
    assert [o["status"] for o in sent.json()["outcomes"]] == ["applied", "applied"]
    shown = api.client.get("/orders/o-7", headers=api.auth("buyer:b1")).json()
    assert shown["delivered_at"] == "2026-11-18T07:00:00Z"
