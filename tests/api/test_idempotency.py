"""The store behind ``Idempotency-Key``, and keyed requests racing each other."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta

from persistence.db import make_engine
from persistence.tokens import SqlIdempotencyStore, StoredResponse

from .conftest import NOW, Api, application


def test_claims_replays_mismatches_and_takeovers(api: Api) -> None:
    store = SqlIdempotencyStore(
        make_engine(api.database_url),
        retention=timedelta(hours=24),
        abandoned_after=timedelta(minutes=2),
    )
    token = api.tokens.create("admin", None, None, NOW)[0].id
    claim = store.claim(token, "k", "POST", "/cases", "f1", NOW)
    assert claim.outcome == "new"
    # a twin while the first runs, and a different request under the same key
    assert store.claim(token, "k", "POST", "/cases", "f1", NOW).outcome == "in_progress"
    assert store.claim(token, "k", "POST", "/cases", "f2", NOW).outcome == "mismatch"
    # the same key on another path is refused, naming the first; of another token it is
    # another key
    elsewhere = store.claim(token, "k", "POST", "/events", "f1", NOW)
    assert (elsewhere.outcome, elsewhere.used_for) == ("elsewhere", "POST /cases")
    other_token = api.tokens.create("admin", "other", None, NOW)[0].id
    assert store.claim(other_token, "k", "POST", "/events", "f1", NOW).outcome == "new"
    # a claim abandoned by a dead process is taken over
    later = NOW + timedelta(minutes=3)
    assert store.claim(token, "k", "POST", "/cases", "f1", later).outcome == "new"
    # once answered, repeats get the answer
    store.complete(token, "k", "POST", "/cases", StoredResponse(201, {"etag": '"1"'}, "{}"))
    replay = store.claim(token, "k", "POST", "/cases", "f1", later)
    assert replay.outcome == "replay"
    assert replay.response == StoredResponse(201, {"etag": '"1"'}, "{}")
    # released claims and expired answers start afresh
    store.release(other_token, "k", "POST", "/events")
    assert store.claim(other_token, "k", "POST", "/events", "f9", later).outcome == "new"
    expired = later + timedelta(hours=25)
    assert store.claim(token, "k", "POST", "/cases", "f3", expired).outcome == "new"
    assert store.prune(expired + timedelta(hours=25)) == 2


def test_racing_repeats_submit_once(api: Api) -> None:
    # given four copies of one keyed submission sent at the same time
    headers = {**api.auth("buyer:b1"), "Idempotency-Key": "race-1"}
    api.import_order(application())

    def send(_: int) -> int:
        return api.client.post("/cases", json=application(), headers=headers).status_code

    with ThreadPoolExecutor(4) as pool:
        statuses = list(pool.map(send, range(4)))
    # then each got the case or was told the first is still running, and there is one case
    assert set(statuses) <= {201, 409}
    assert 201 in statuses
    listed = api.client.get("/cases", headers=api.auth("admin")).json()["cases"]
    assert len(listed) == 1


def test_a_key_used_on_one_endpoint_is_refused_on_another(api: Api) -> None:
    # given a buyer's submission under a key
    headers = {**api.auth("buyer:b1"), "Idempotency-Key": "k-1"}
    api.import_order(application())
    created = api.client.post("/cases", json=application(), headers=headers)
    assert created.status_code == 201, created.text
    case_id = created.json()["id"]

    # when the buyer cancels the case with the same key
    cancel = api.client.post(
        f"/cases/{case_id}/transitions", json={"trigger": "cancel"}, headers=headers
    )

    # then it is refused, naming the first use, and the case was not cancelled (before,
    # the cancel answered 200 with the submission's records and did nothing)
    assert cancel.status_code == 409, cancel.text
    body = cancel.json()
    assert body["type"].endswith("idempotency-key-reused")
    assert "POST /cases" in body["detail"]
    assert api.cases.get(case_id).case.state.value == "submitted"
