"""Health, readiness, metrics and rate limits."""

from __future__ import annotations

import os
import time
import uuid
from datetime import timedelta
from typing import Any

import pytest
import redis

from config.settings import ApiSettings
from tasks import producer
from workflow.model import Actor
from workflow.states import Role

from .conftest import Api, problem

REDIS_ENV = "AFTERSALES_TEST_REDIS_URL"


def test_health_and_readiness(api: Api) -> None:
    assert api.client.get("/healthz").json() == {"status": "ok"}
    # an anonymous probe learns only the status
    ready = api.client.get("/readyz")
    assert ready.status_code == 200
    assert ready.json() == {"status": "ready"}
    # an admin sees each check
    detailed = api.client.get("/readyz", headers=api.auth("admin"))
    assert detailed.json() == {
        "status": "ready",
        "checks": {
            "database": {"ok": True, "detail": None},
            "broker": {"ok": True, "detail": None},
        },
    }
    # another role does not; a token that is not one is refused as everywhere
    assert api.client.get("/readyz", headers=api.auth("merchant:m1")).json() == {"status": "ready"}
    wrong = api.client.get("/readyz", headers={"Authorization": "Bearer ast_wrong"})
    problem(wrong, 401, "unauthorized")


def test_not_ready_when_the_broker_is_unreachable(make_api: Any) -> None:
    # given an app whose broker is a Redis nobody listens on
    api = make_api(broker_url="redis://127.0.0.1:1/0")
    # then readiness fails on the broker, and health does not; where the broker is, and why
    # it fails, is for admins (host and port help an attacker too)
    anonymous = api.client.get("/readyz")
    assert (anonymous.status_code, anonymous.json()) == (503, {"status": "not_ready"})
    assert "127.0.0.1" not in anonymous.text
    response = api.client.get("/readyz", headers=api.auth("admin"))
    assert response.status_code == 503
    body = response.json()
    assert body["status"] == "not_ready"
    assert body["checks"]["database"]["ok"] is True
    assert body["checks"]["broker"]["ok"] is False
    assert "Connection" in body["checks"]["broker"]["detail"]
    assert api.client.get("/healthz").status_code == 200


def _samples(text: str) -> dict[str, float]:
    found = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            found[name] = float(value)
    return found


def test_metrics_report_cases_transitions_timers_outbox_letters_and_refunds(api: Api) -> None:
    # given a refund_only case refunded after one failure, a timer fired 3 s late, a dead letter
    refund = api.submit(
        type="refund_only", reason="not_received", order_id="o-r", delivered_at=None, gifts=[]
    )
    api.fire(refund, "approve", "merchant:m1")
    api.fire(refund, "fail_refund", "payment:wechat-pay", data={"error": "timeout"})
    api.fire(refund, "retry_refund", "admin:ops1", reason="channel is back")
    api.fire(refund, "confirm_refund", "payment:wechat-pay")
    late = api.submit(order_id="o-t")
    api.clock.advance(timedelta(hours=48, seconds=3))
    runs = api.cases.run_due_timers()
    assert [run.fired for run in runs if run.timer.case_id == late] == [True]
    api.events.ingest(
        {
            "event_id": "x",
            "source": "sf",
            "type": "parcel.lost",
            "occurred_at": "2026-11-20T11:00:00Z",
            "case_id": 999,
        }
    )
    # when an admin scrapes
    response = api.client.get("/metrics", headers=api.auth("admin"))
    # then Prometheus text has every family
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    samples = _samples(response.text)
    assert samples['aftersales_cases{state="refunded",type="refund_only"}'] == 1
    assert samples['aftersales_cases{state="approved",type="return_refund"}'] == 1
    assert (
        samples[
            'aftersales_transitions_total{state="approved",trigger="auto_approve",type="return_refund"}'
        ]
        == 1
    )
    assert samples['aftersales_refunds_total{outcome="succeeded"}'] == 1
    assert samples['aftersales_refunds_total{outcome="failed"}'] == 1
    assert samples["aftersales_timer_lateness_seconds_count"] == 1
    assert samples['aftersales_timer_lateness_seconds_bucket{le="2.0"}'] == 0
    assert samples['aftersales_timer_lateness_seconds_bucket{le="5.0"}'] == 1
    assert samples["aftersales_timer_lateness_seconds_sum"] == 3
    assert samples["aftersales_outbox_backlog"] > 0
    assert samples['aftersales_dead_letters{status="open"}'] == 1
    # and this process's requests, the first scrape among them
    again = _samples(api.client.get("/metrics", headers=api.auth("admin")).text)
    assert again['aftersales_http_requests_total{method="GET",route="/metrics",status="200"}'] == 1


def test_metrics_need_an_admin(api: Api) -> None:
    problem(api.client.get("/metrics"), 401, "unauthorized")
    problem(api.client.get("/metrics", headers=api.auth("merchant:m1")), 403, "forbidden")


def test_requests_over_the_rate_limit_get_429_with_retry_after(make_api: Any) -> None:
    api = make_api(ApiSettings(rate_limit_per_minute=3))
    headers = api.auth("buyer:b1")
    statuses = [api.client.get("/cases", headers=headers).status_code for _ in range(4)]
    assert statuses == [200, 200, 200, 429]
    limited = api.client.get("/cases", headers=headers)
    problem(limited, 429, "rate-limited")
    assert int(limited.headers["retry-after"]) >= 1
    # the limit is per token: another caller is not held back
    assert api.client.get("/cases", headers=api.auth("buyer:b2")).status_code == 200


def test_guessing_tokens_is_slowed_down(make_api: Any) -> None:
    api = make_api(ApiSettings(auth_failures_per_minute=2))
    wrong = {"Authorization": "Bearer ast_guess"}
    statuses = [api.client.get("/cases", headers=wrong).status_code for _ in range(3)]
    assert statuses == [401, 401, 429]


def test_actor_of_an_unnamed_admin_token_names_the_token(api: Api) -> None:
    case_id = api.submit()
    secret = api.token("admin")
    token = api.tokens.authenticate(secret)
    assert token is not None
    api.client.post(
        f"/cases/{case_id}/transitions",
        json={"trigger": "force_close", "reason": "duplicate"},
        headers={"Authorization": f"Bearer {secret}"},
    )
    last = api.cases.history(case_id)[-1]
    assert last.actor == str(Actor(Role.ADMIN, f"token-{token.id}"))


def test_metrics_count_the_producers_unconfirmed_events_on_redis(
    make_api: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    # given an app on a Redis broker (under a key prefix of the test's own)
    base = os.environ.get(REDIS_ENV)
    if not base:
        pytest.skip(f"{REDIS_ENV} is not set")
    prefix = f"aftersales-test:{uuid.uuid4().hex}:"
    monkeypatch.setenv("AFTERSALES_BROKER_KEY_PREFIX", prefix)
    api = make_api(broker_url=base)
    client = redis.Redis.from_url(base)
    try:
        # and two events a producer kept, one of them sent long ago and not processed since
        for event_id in ("e-old", "e-new"):
            envelope = producer.make_envelope("sf", "parcel.delivered", event_id=event_id)
            producer.publish_event(envelope, base, queue="nowhere", key_prefix=prefix)
        old = producer.unconfirmed_member("sf", "e-old")
        client.zadd(prefix + producer.UNCONFIRMED_KEY, {old: time.time() - 3600}, xx=True)

        # when an admin scrapes
        samples = _samples(api.client.get("/metrics", headers=api.auth("admin")).text)

        # then both are counted, and the old one is due for the resender
        assert samples["aftersales_unconfirmed_events"] == 2
        assert samples["aftersales_unconfirmed_events_due"] == 1
    finally:
        keys = list(client.scan_iter(match=f"{prefix}*"))
        if keys:
            client.delete(*keys)
        client.close()


def test_metrics_have_no_ledger_without_redis(api: Api) -> None:
    samples = _samples(api.client.get("/metrics", headers=api.auth("admin")).text)
    assert "aftersales_unconfirmed_events" not in samples
