"""``/cases`` over HTTP on SQLite and PostgreSQL: shapes, errors, ETag/If-Match, idempotency."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from typer.testing import CliRunner

from entrypoints.cli.main import app as cli_app

from .conftest import ADMIN_REASON, Api, application, problem


def test_submit_answers_201_with_location_etag_and_the_case(api: Api) -> None:
    # given a buyer's token
    headers = api.auth("buyer:b1")
    # when the buyer submits an application
    response = api.client.post("/cases", json=api.import_order(application()), headers=headers)
    # then the case is created, with its address and version
    assert response.status_code == 201, response.text
    case = response.json()
    assert response.headers["location"] == f"/cases/{case['id']}"
    assert response.headers["etag"] == '"1"'
    assert case["state"] == "submitted"
    assert case["refund_amount"] == 19900
    assert case["deadline"]["kind"] == "merchant_review"
    assert case["allowed_triggers"] == ["cancel"]


def test_invalid_application_is_422_naming_the_field(api: Api) -> None:
    bad = application(items=[{"sku": "jacket", "quantity": 0, "unit_price": 19900}])
    response = api.client.post("/cases", json=bad, headers=api.auth("buyer:b1"))
    body = problem(response, 422, "invalid-input")
    assert body["field"] == "body.items.0.quantity"
    assert body["errors"][0]["field"] == "body.items.0.quantity"


def test_policy_refusal_is_422_naming_the_rule(api: Api) -> None:
    late = api.import_order(application(delivered_at="2026-11-01T10:00:00+08:00"))
    response = api.client.post("/cases", json=late, headers=api.auth("buyer:b1"))
    body = problem(response, 422, "policy-refusal")
    assert body["rule"] == "no_reason_window"


def test_malformed_json_is_400_and_other_media_415(api: Api) -> None:
    headers = {**api.auth("buyer:b1"), "Content-Type": "application/json"}
    problem(
        api.client.post("/cases", content=b'{"type": ', headers=headers), 400, "malformed-request"
    )
    problem(api.client.post("/cases", content=b"NaN", headers=headers), 400, "malformed-request")
    text = {**api.auth("buyer:b1"), "Content-Type": "text/plain"}
    problem(api.client.post("/cases", content=b"{}", headers=text), 415, "unsupported-media-type")


def test_text_the_databases_cannot_store_is_422(api: Api) -> None:
    headers = {**api.auth("buyer:b1"), "Content-Type": "application/json"}
    nul = json.dumps(application(description="a\u0000b")).encode()
    assert (
        problem(api.client.post("/cases", content=nul, headers=headers), 422, "invalid-input")[
            "field"
        ]
        == "body.description"
    )
    surrogate = json.dumps(application(description="\ud800")).encode()
    problem(api.client.post("/cases", content=surrogate, headers=headers), 422, "invalid-input")
    deep = b"[" * 40 + b"]" * 40
    problem(api.client.post("/cases", content=deep, headers=headers), 422, "invalid-input")


def test_oversized_body_is_413(api: Api) -> None:
    huge = application(description="x" * 300_000)
    response = api.client.post("/cases", json=huge, headers=api.auth("buyer:b1"))
    problem(response, 413, "payload-too-large")


def test_out_of_range_values_are_422_not_500(api: Api) -> None:
    headers = api.auth("buyer:b1")
    huge_id = api.client.get(f"/cases/{2**70}", headers=headers)
    assert problem(huge_id, 422, "invalid-input")["field"] == "path.case_id"
    year_one = application(
        payment={"channel": "wechat_pay", "amount": 19900, "paid_at": "0001-01-01T00:00:00+14:00"}
    )
    problem(api.client.post("/cases", json=year_one, headers=headers), 422, "invalid-input")
    rich = application(
        payment={"channel": "x", "amount": 10**20, "paid_at": "2026-11-15T10:00:00Z"}
    )
    problem(api.client.post("/cases", json=rich, headers=headers), 422, "invalid-input")


def test_get_case_has_etag_and_answers_304_when_unchanged(api: Api) -> None:
    case_id = api.submit()
    headers = api.auth("merchant:m1")
    response = api.client.get(f"/cases/{case_id}", headers=headers)
    assert response.status_code == 200
    assert response.headers["etag"] == '"1"'
    assert response.json()["allowed_triggers"] == ["approve", "reject"]
    unchanged = api.client.get(f"/cases/{case_id}", headers={**headers, "If-None-Match": '"1"'})
    assert unchanged.status_code == 304
    api.fire(case_id, "approve", "merchant:m1")
    changed = api.client.get(f"/cases/{case_id}", headers={**headers, "If-None-Match": '"1"'})
    assert changed.status_code == 200
    assert changed.headers["etag"] == '"2"'


def test_unknown_case_is_404(api: Api) -> None:
    problem(api.client.get("/cases/999", headers=api.auth("admin")), 404, "not-found")
    problem(api.client.get("/no/such/path", headers=api.auth("admin")), 404, "not-found")


def test_list_filters_and_pages_with_a_cursor(api: Api) -> None:
    # given five cases of b1 on five orders, and one of another buyer
    ids = [api.submit(order_id=f"o-{n}") for n in range(5)]
    api.submit(order_id="o-x", buyer_id="b2")
    headers = api.auth("buyer:b1")
    # when b1 pages through its cases two at a time
    first = api.client.get("/cases", params={"limit": 2}, headers=headers)
    assert first.status_code == 200
    page = first.json()
    assert [c["id"] for c in page["cases"]] == ids[:2]
    assert page["next_after"] == ids[1]
    assert f"after={ids[1]}" in first.headers["link"]
    seen = [c["id"] for c in page["cases"]]
    while page["next_after"] is not None:
        params = {"limit": 2, "after": page["next_after"]}
        page = api.client.get("/cases", params=params, headers=headers).json()
        seen += [c["id"] for c in page["cases"]]
    # then it sees exactly its own five
    assert seen == ids
    # and filters combine with the ownership
    approved = ids[0]
    api.fire(approved, "approve", "merchant:m1")
    only = api.client.get("/cases", params={"state": "approved"}, headers=headers).json()
    assert [c["id"] for c in only["cases"]] == [approved]
    admin = api.client.get("/cases", params={"buyer_id": "b2"}, headers=api.auth("admin"))
    assert [c["buyer_id"] for c in admin.json()["cases"]] == ["b2"]


def test_list_rejects_bad_filters_with_422(api: Api) -> None:
    headers = api.auth("admin")
    response = api.client.get("/cases", params={"state": "lost"}, headers=headers)
    # state repeats (any of several): the field names the value at fault
    assert problem(response, 422, "invalid-input")["field"] == "query.state.0"
    problem(api.client.get("/cases", params={"limit": 0}, headers=headers), 422, "invalid-input")
    bad_id = api.client.get("/cases", params={"order_id": "a b"}, headers=headers)
    problem(bad_id, 422, "invalid-input")


def test_fire_moves_the_case_and_returns_transitions(api: Api) -> None:
    case_id = api.submit()
    response = api.client.post(
        f"/cases/{case_id}/transitions",
        json={"trigger": "approve"},
        headers=api.auth("merchant:m1"),
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["case"]["state"] == "approved"
    assert body["replayed"] is False
    assert [t["trigger"] for t in body["transitions"]] == ["approve"]
    assert body["transitions"][0]["actor"] == "merchant:m1"
    assert response.headers["etag"] == '"2"'


def test_illegal_transition_is_409_with_the_allowed_triggers(api: Api) -> None:
    case_id = api.submit()
    response = api.client.post(
        f"/cases/{case_id}/transitions",
        json={"trigger": "inspect"},
        headers=api.auth("merchant:m1"),
    )
    body = problem(response, 409, "illegal-transition")
    assert body["allowed"] == ["approve", "reject"]
    assert api.history(case_id) == ["submit"]


def test_invalid_trigger_data_is_422_naming_the_field(api: Api) -> None:
    case_id = api.submit()
    api.fire(case_id, "approve", "merchant:m1")
    response = api.client.post(
        f"/cases/{case_id}/transitions",
        json={"trigger": "ship_back", "data": {"tracking_no": "S F"}},
        headers=api.auth("buyer:b1"),
    )
    assert problem(response, 422, "invalid-input")["field"] == "data.tracking_no"
    unknown = api.client.post(
        f"/cases/{case_id}/transitions", json={"trigger": "teleport"}, headers=api.auth("buyer:b1")
    )
    assert problem(unknown, 422, "invalid-input")["field"] == "trigger"


def test_admin_needs_a_reason(api: Api) -> None:
    case_id = api.submit()
    path = f"/cases/{case_id}/transitions"
    refused = api.client.post(path, json={"trigger": "force_close"}, headers=api.auth("admin:ops1"))
    assert problem(refused, 422, "invalid-input")["field"] == "reason"
    closed = api.client.post(
        path, json={"trigger": "force_close", **ADMIN_REASON}, headers=api.auth("admin:ops1")
    )
    assert closed.status_code == 200
    assert closed.json()["transitions"][0]["actor"] == "admin:ops1"


def test_stale_if_match_is_412_and_changes_nothing(api: Api) -> None:
    # given a case the merchant read at version 1, approved meanwhile by the review timer's twin
    case_id = api.submit()
    etag = api.client.get(f"/cases/{case_id}", headers=api.auth("buyer:b1")).headers["etag"]
    api.fire(case_id, "approve", "merchant:m1")
    # when the buyer cancels, conditional on what it read
    response = api.client.post(
        f"/cases/{case_id}/transitions",
        json={"trigger": "cancel"},
        headers={**api.auth("buyer:b1"), "If-Match": etag},
    )
    # then 412 with the current version, and nothing changed
    body = problem(response, 412, "precondition-failed")
    assert body["current_version"] == 2
    assert response.headers["etag"] == '"2"'
    assert api.history(case_id) == ["submit", "approve"]


def test_current_if_match_lets_the_transition_through(api: Api) -> None:
    for number, tags in enumerate(('"1"', '"7", "1"', "*")):
        case_id = api.submit(order_id=f"o-{number}")
        response = api.client.post(
            f"/cases/{case_id}/transitions",
            json={"trigger": "approve"},
            headers={**api.auth("merchant:m1"), "If-Match": tags},
        )
        assert response.status_code == 200, (tags, response.text)
    weak = api.submit(order_id="o-weak")
    response = api.client.post(
        f"/cases/{weak}/transitions",
        json={"trigger": "approve"},
        headers={**api.auth("merchant:m1"), "If-Match": 'W/"1"'},
    )
    problem(response, 412, "precondition-failed")


def test_malformed_if_match_is_400(api: Api) -> None:
    case_id = api.submit()
    response = api.client.post(
        f"/cases/{case_id}/transitions",
        json={"trigger": "approve"},
        headers={**api.auth("merchant:m1"), "If-Match": "1"},
    )
    problem(response, 400, "malformed-request")
    assert api.history(case_id) == ["submit"]


def test_idempotency_key_replays_the_first_response(api: Api) -> None:
    # given a buyer's submission with a key
    headers = {**api.auth("buyer:b1"), "Idempotency-Key": "submit-1"}
    first = api.client.post("/cases", json=api.import_order(application()), headers=headers)
    assert first.status_code == 201
    # when it is sent again (a retry after a timeout)
    again = api.client.post("/cases", json=application(), headers=headers)
    # then the first response comes back, and there is still one case
    assert again.status_code == 201
    assert again.json() == first.json()
    assert again.headers["etag"] == first.headers["etag"]
    assert again.headers["location"] == first.headers["location"]
    assert again.headers["idempotent-replayed"] == "true"
    assert len(api.client.get("/cases", headers=api.auth("admin")).json()["cases"]) == 1


def test_idempotency_key_of_a_transition_fires_once(api: Api) -> None:
    case_id = api.submit()
    path = f"/cases/{case_id}/transitions"
    headers = {**api.auth("merchant:m1"), "Idempotency-Key": "approve-1"}
    first = api.client.post(path, json={"trigger": "approve"}, headers=headers)
    again = api.client.post(path, json={"trigger": "approve"}, headers=headers)
    assert first.status_code == again.status_code == 200
    assert again.json() == first.json()
    assert api.history(case_id) == ["submit", "approve"]
    # errors are answers too: a refused request repeats its refusal
    bad = {**headers, "Idempotency-Key": "reject-1"}
    refused = api.client.post(path, json={"trigger": "reject"}, headers=bad)
    problem(refused, 409, "illegal-transition")
    assert api.client.post(path, json={"trigger": "reject"}, headers=bad).json() == refused.json()


def test_idempotency_key_reused_for_another_request_is_422(api: Api) -> None:
    headers = {**api.auth("buyer:b1"), "Idempotency-Key": "k"}
    app = api.import_order(application())
    assert api.client.post("/cases", json=app, headers=headers).status_code == 201
    other_app = api.import_order(application(order_id="o-2"))
    other = api.client.post("/cases", json=other_app, headers=headers)
    problem(other, 409, "idempotency-key-reused")


def test_idempotency_keys_belong_to_their_token(api: Api) -> None:
    # given two buyers who happen to choose the same key
    one = api.client.post(
        "/cases",
        json=api.import_order(application()),
        headers={**api.auth("buyer:b1"), "Idempotency-Key": "k"},
    )
    two = api.client.post(
        "/cases",
        json=api.import_order(application(order_id="o-2", buyer_id="b2")),
        headers={**api.auth("buyer:b2"), "Idempotency-Key": "k"},
    )
    # then each gets its own case
    assert one.status_code == two.status_code == 201
    assert one.json()["id"] != two.json()["id"]


def test_history_diagram_and_timers(api: Api) -> None:
    case_id = api.submit()
    api.fire(case_id, "approve", "merchant:m1")
    headers = api.auth("buyer:b1")
    history = api.client.get(f"/cases/{case_id}/history", headers=headers).json()
    assert [(e["seq"], e["trigger"], e["to_state"]) for e in history] == [
        (1, "submit", "submitted"),
        (2, "approve", "approved"),
    ]
    diagram = api.client.get(f"/cases/{case_id}/diagram", headers=headers).json()
    assert diagram["state"] == "approved"
    assert diagram["mermaid"].startswith("stateDiagram-v2")
    assert "class approved current" in diagram["mermaid"]
    timers = api.client.get(f"/cases/{case_id}/timers", headers=headers).json()
    assert timers["deadline"]["kind"] == "return_shipment"
    assert [(t["kind"], t["status"]) for t in timers["timers"]] == [
        ("merchant_review", "cancelled"),
        ("return_shipment", "pending"),
    ]


def test_admin_extends_the_deadline_with_a_reason(api: Api) -> None:
    case_id = api.submit()
    path = f"/cases/{case_id}/deadline-extensions"
    before = api.client.get(f"/cases/{case_id}", headers=api.auth("admin")).json()["deadline"]
    response = api.client.post(
        path, json={"hours": 24, **ADMIN_REASON}, headers={**api.auth("admin"), "If-Match": '"1"'}
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["transitions"][0]["trigger"] == "extend_deadline"
    assert body["case"]["deadline"]["due_at"] > before["due_at"]
    assert response.headers["etag"] == '"2"'
    stale = api.client.post(
        path, json={"hours": 1, **ADMIN_REASON}, headers={**api.auth("admin"), "If-Match": '"1"'}
    )
    problem(stale, 412, "precondition-failed")
    neither = api.client.post(path, json=ADMIN_REASON, headers=api.auth("admin"))
    assert problem(neither, 422, "invalid-input")["field"] == "body"
    no_reason = api.client.post(path, json={"hours": 1}, headers=api.auth("admin"))
    assert problem(no_reason, 422, "invalid-input")["field"] == "body.reason"


def test_a_deadline_extension_is_bounded_by_the_longest_extension(make_api: Any) -> None:
    # given an app whose longest extension is 48 hours, and a case due in 48 hours
    api = make_api(max_deadline_extension=timedelta(hours=48))
    case_id = api.submit()
    path = f"/cases/{case_id}/deadline-extensions"
    admin = api.auth("admin")
    due = datetime.fromisoformat(
        api.client.get(f"/cases/{case_id}", headers=admin).json()["deadline"]["due_at"]
    )
    # when an extension asks for more hours than that, then it is invalid input and nothing moved
    too_many = api.client.post(path, json={"hours": 49, **ADMIN_REASON}, headers=admin)
    assert problem(too_many, 422, "invalid-input")["field"] == "data.hours"
    # when it names a time further than that past the current deadline (year 9999 before)
    for until in (due + timedelta(hours=48, seconds=1), datetime(9999, 12, 31, tzinfo=UTC)):
        far = api.client.post(
            path, json={"until": until.isoformat(), **ADMIN_REASON}, headers=admin
        )
        assert problem(far, 409, "state-conflict")["field"] == "data.until"
    # when it names a time before the current deadline: the case's state refuses it
    earlier = api.client.post(
        path, json={"until": (due - timedelta(hours=1)).isoformat(), **ADMIN_REASON}, headers=admin
    )
    problem(earlier, 409, "state-conflict")
    assert api.history(case_id) == ["submit"]
    # then exactly the longest extension is allowed
    done = api.client.post(path, json={"hours": 48, **ADMIN_REASON}, headers=admin)
    assert done.status_code == 200, done.text
    # and the document states the bound
    schema = api.client.get("/openapi.json").json()["components"]["schemas"]["ExtendIn"]
    assert schema["properties"]["hours"]["maximum"] == 48


def test_extending_the_deadline_of_a_case_without_one_is_a_state_conflict(api: Api) -> None:
    # given a cancelled case: no deadline is pending
    case_id = api.submit()
    api.fire(case_id, "cancel", "buyer:b1")
    # when an admin extends its deadline
    response = api.client.post(
        f"/cases/{case_id}/deadline-extensions",
        json={"hours": 1, **ADMIN_REASON},
        headers=api.auth("admin"),
    )
    # then the case's state refuses it (409), not the request's shape (422)
    assert problem(response, 409, "state-conflict")["field"] == "case"


def test_extend_deadline_on_the_command_line_has_the_same_bound(
    api: Api, monkeypatch: pytest.MonkeyPatch
) -> None:
    # given the API's database and a longest extension of 2 days for the command line
    case_id = api.submit()
    monkeypatch.setenv("AFTERSALES_DATABASE_URL", api.database_url)
    monkeypatch.setenv("AFTERSALES_MAX_DEADLINE_EXTENSION", "2d")
    # when `case extend-deadline` asks for 3 days
    result = CliRunner().invoke(
        cli_app,
        [
            "--json",
            "case",
            "extend-deadline",
            str(case_id),
            "--hours",
            "72",
            "--actor",
            "admin:ops",
            "--reason",
            "holiday",
        ],
    )
    # then the service refuses it as for the API, naming the field
    assert result.exit_code == 2, result.output
    assert json.loads(result.stderr)["error"]["field"] == "data.hours"
    assert api.history(case_id) == ["submit"]
