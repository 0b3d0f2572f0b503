"""``/events`` over HTTP: ingestion with per-event outcomes, producers' sources, dead letters."""

from __future__ import annotations

from typing import Any

from .conftest import Api, problem

#: The body of a dead letter's replay or discard.
WHY = {"reason": "checked by hand"}


def event(event_id: str, type_: str = "parcel.picked_up", **fields: Any) -> dict[str, Any]:
    return {
        "event_id": event_id,
        "source": "sf-express",
        "type": type_,
        "occurred_at": "2026-11-20T11:00:00+08:00",
        **fields,
    }


def booked(api: Api) -> int:
    """A case approved, its carrier pickup booked: the carrier's first scan names the parcel."""
    case_id = api.submit()
    api.fire(case_id, "approve", "merchant:m1")
    api.fire(case_id, "book_pickup", "system", data={"carrier": "SF", "pickup_code": "PK-1"})
    return case_id


def test_one_event_is_applied_with_202(api: Api) -> None:
    # given an approved case whose pickup is booked, and a carrier's token
    case_id = booked(api)
    headers = api.auth("producer:sf-express")
    # when the carrier reports the pickup
    response = api.client.post(
        "/events", json=event("sf-1", case_id=case_id, tracking_no="SF1"), headers=headers
    )
    # then it is applied and the case moved
    assert response.status_code == 202, response.text
    body = response.json()
    assert body["summary"] == {
        "applied": 1,
        "duplicate": 0,
        "ignored": 0,
        "dead_lettered": 0,
        "total": 1,
    }
    outcome = body["outcomes"][0]
    assert (outcome["status"], outcome["trigger"], outcome["state"]) == (
        "applied",
        "record_pickup",
        "shipped_back",
    )
    assert api.history(case_id)[-1] == "record_pickup"


def test_a_batch_reports_each_outcome_in_order(api: Api) -> None:
    case_id = booked(api)
    batch = [
        event("sf-1", case_id=case_id, tracking_no="SF1"),
        event("sf-1", case_id=case_id, tracking_no="SF1"),
        event("sf-2", "parcel.delivered", case_id=case_id, tracking_no="SF1"),
        event("sf-3", "parcel.lost", case_id=999),
    ]
    response = api.client.post("/events", json=batch, headers=api.auth("producer:sf-express"))
    assert response.status_code == 202
    body = response.json()
    assert [o["status"] for o in body["outcomes"]] == [
        "applied",
        "duplicate",
        "applied",
        "dead_lettered",
    ]
    assert body["outcomes"][3]["code"] == "not_found"
    assert body["summary"]["total"] == 4


def test_a_producer_sends_only_its_own_source(api: Api) -> None:
    case_id = api.submit()
    api.fire(case_id, "approve", "merchant:m1")
    other = {**event("wp-1", "refund.failed", case_id=case_id), "source": "wechat-pay"}
    mixed = [event("sf-1", case_id=case_id), other]
    response = api.client.post("/events", json=mixed, headers=api.auth("producer:sf-express"))
    assert "wechat-pay" in problem(response, 403, "forbidden")["detail"]
    # nothing was ingested, not even the event of its own source
    assert api.history(case_id) == ["submit", "approve"]
    admin = api.client.post("/events", json=mixed[1], headers=api.auth("admin"))
    assert admin.status_code == 202


def test_an_event_outside_its_sources_kind_is_403_and_nothing_is_ingested(api: Api) -> None:
    # given a submitted case, and the carrier's own token
    case_id = api.submit()
    headers = api.auth("producer:sf-express")
    # when the carrier's source approves it for the merchant
    approval = {
        **event("sf-7", "merchant.approved", case_id=case_id),
        "data": {"merchant_id": "m1"},
    }
    response = api.client.post("/events", json=[approval], headers=headers)
    # then it is refused whole, naming the kind, and nothing moved or was dead-lettered
    body = problem(response, 403, "forbidden")
    assert "carrier" in body["detail"] and "merchant.approved" in body["detail"]
    assert api.history(case_id) == ["submit"]
    assert api.events.dead_letters() == []
    # and an admin cannot send it in the carrier's name either, nor for an unknown source
    admin = api.auth("admin")
    problem(api.client.post("/events", json=approval, headers=admin), 403, "forbidden")
    unknown = {**event("yt-1", case_id=case_id, tracking_no="YT1"), "source": "yto"}
    body = problem(api.client.post("/events", json=unknown, headers=admin), 403, "forbidden")
    assert "not a configured producer" in body["detail"]


def test_the_history_names_the_event_that_moved_the_case(api: Api) -> None:
    case_id = booked(api)
    sent = api.client.post(
        "/events",
        json=event("sf-1", case_id=case_id, tracking_no="SF1"),
        headers=api.auth("producer:sf-express"),
    )
    assert sent.status_code == 202
    history = api.client.get(f"/cases/{case_id}/history", headers=api.auth("admin")).json()
    assert (history[-1]["actor"], history[-1]["source"]) == (
        "carrier:sf-express",
        "event sf-express/sf-1",
    )


def test_malformed_envelopes_are_refused_whole_with_422(api: Api) -> None:
    case_id = api.submit()
    headers = api.auth("producer:sf-express")
    naive = [
        event("sf-1", case_id=case_id),
        event("sf-2", case_id=case_id, occurred_at="2026-11-20T11:00:00"),
    ]
    body = problem(api.client.post("/events", json=naive, headers=headers), 422, "invalid-input")
    assert body["field"] == "body.1.occurred_at"
    nameless = event("sf-3")
    body = problem(api.client.post("/events", json=nameless, headers=headers), 422, "invalid-input")
    assert body["field"] == "body"
    problem(api.client.post("/events", json=[], headers=headers), 422, "invalid-input")
    problem(api.client.post("/events", json=[1], headers=headers), 422, "invalid-input")
    # nothing was dead-lettered: the producer was told, and can fix and resend
    assert api.events.dead_letters() == []


def test_batches_are_bounded(make_api: Any) -> None:
    from config.settings import ApiSettings

    small = make_api(ApiSettings(max_batch=2, rate_limit_per_minute=0))
    batch = [event(f"sf-{n}", case_id=1) for n in range(3)]
    response = small.client.post("/events", json=batch, headers=small.auth("admin"))
    assert "at most 2" in problem(response, 422, "invalid-input")["detail"]


def test_dead_letters_are_listed_replayed_and_discarded(api: Api) -> None:
    # given a delivery reported before the case was approved (a dead letter), and another one
    case_id = api.submit()
    early = event("sf-9", "parcel.picked_up", case_id=case_id, tracking_no="SF1")
    lost = event("sf-10", "parcel.lost", case_id=999)
    sent = api.client.post("/events", json=[early, lost], headers=api.auth("producer:sf-express"))
    letters = [o["letter_id"] for o in sent.json()["outcomes"]]
    admin = api.auth("admin")
    listed = api.client.get("/events/dead-letters", headers=admin).json()
    assert [letter["id"] for letter in listed["dead_letters"]] == letters
    # (the case has no booked pickup yet: the parcel is not its own)
    assert listed["dead_letters"][0]["code"] == "invalid_input"
    one = api.client.get(f"/events/dead-letters/{letters[0]}", headers=admin).json()
    assert one["envelope"]["event_id"] == "sf-9"
    # when replayed too early it still fails: 409, and the letter stays open with one more try
    still = api.client.post(f"/events/dead-letters/{letters[0]}/replay", json=WHY, headers=admin)
    assert problem(still, 409, "dead-letter-still-fails")["code"] == "invalid_input"
    assert (
        api.client.get(f"/events/dead-letters/{letters[0]}", headers=admin).json()["attempts"] == 2
    )
    # when the case is ready, the replay applies it
    api.fire(case_id, "approve", "merchant:m1")
    api.fire(case_id, "book_pickup", "system", data={"carrier": "SF", "pickup_code": "PK-1"})
    replayed = api.client.post(f"/events/dead-letters/{letters[0]}/replay", json=WHY, headers=admin)
    assert replayed.status_code == 200, replayed.text
    assert replayed.json()["status"] == "applied"
    discard = f"/events/dead-letters/{letters[1]}/discard"
    discarded = api.client.post(discard, json=WHY, headers=admin)
    assert discarded.json()["status"] == "discarded"
    assert discarded.json()["resolution"] == "checked by hand"
    assert discarded.json()["resolved_by"].startswith("admin")
    # then no letter is open; all of them are listed with status=all
    assert api.client.get("/events/dead-letters", headers=admin).json()["dead_letters"] == []
    every = api.client.get("/events/dead-letters", params={"status": "all"}, headers=admin).json()
    assert [letter["status"] for letter in every["dead_letters"]] == ["replayed", "discarded"]
    again = api.client.post(discard, json=WHY, headers=admin)
    problem(again, 409, "state-conflict")
    problem(
        api.client.post("/events/dead-letters/999/replay", json=WHY, headers=admin),
        404,
        "not-found",
    )


def test_dead_letter_envelopes_are_masked(api: Api) -> None:
    case_id = api.submit()
    bank = {
        "event_id": "app-1",
        "source": "buyer-app",
        "type": "buyer.bank_account_provided",
        "occurred_at": "2026-11-20T11:00:00+08:00",
        "case_id": case_id,
        "data": {
            "buyer_id": "b1",
            "holder": "Li",
            "bank": "ICBC",
            "account_no": "6222020200112233",
        },
    }
    api.client.post("/events", json=bank, headers=api.auth("admin"))
    letters = api.client.get("/events/dead-letters", headers=api.auth("admin")).json()
    assert letters["dead_letters"][0]["envelope"]["data"]["account_no"] == "************2233"


def test_replaying_or_discarding_a_dead_letter_needs_a_reason(api: Api) -> None:
    sent = api.client.post(
        "/events",
        json=event("sf-10", "parcel.lost", case_id=999, tracking_no="SF1"),
        headers=api.auth("producer:sf-express"),
    )
    letter_id = sent.json()["outcomes"][0]["letter_id"]
    admin = api.auth("admin")
    for action in ("replay", "discard"):
        url = f"/events/dead-letters/{letter_id}/{action}"
        problem(api.client.post(url, headers=admin), 422, "invalid-input")
        problem(api.client.post(url, json={"reason": ""}, headers=admin), 422, "invalid-input")
    letter = api.client.get(f"/events/dead-letters/{letter_id}", headers=admin).json()
    assert (letter["status"], letter["resolved_by"], letter["resolution"]) == ("open", None, None)


def test_the_history_names_the_token_a_request_came_with(api: Api) -> None:
    case_id = api.submit()
    headers = api.auth("merchant:m1")
    fired = api.client.post(
        f"/cases/{case_id}/transitions", json={"trigger": "approve"}, headers=headers
    )
    assert fired.status_code == 200, fired.text
    token_id = api.tokens.authenticate(headers["Authorization"].removeprefix("Bearer ")).id
    history = api.client.get(f"/cases/{case_id}/history", headers=headers).json()
    assert (history[-1]["actor"], history[-1]["source"]) == (
        "merchant:m1",
        f"api token #{token_id}",
    )
