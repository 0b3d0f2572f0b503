"""Token lifetimes over HTTP: an expired token is refused with its own problem, and a token's
last use is recorded at most once a minute (not a write per request)."""

from __future__ import annotations

from datetime import timedelta

from .conftest import Api, problem


def _bearer(secret: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {secret}"}


def test_a_token_works_until_it_expires_then_answers_token_expired(api: Api) -> None:
    # given a token that expires in one hour
    now = api.clock.now()
    token, secret = api.tokens.create("admin", None, None, now, now + timedelta(hours=1))
    # then it works within the hour
    assert api.client.get("/cases", headers=_bearer(secret)).status_code == 200
    # when the hour has passed
    api.clock.advance(timedelta(hours=1))
    response = api.client.get("/cases", headers=_bearer(secret))
    # then it is 401 with a problem that says so, for bearer clients too
    body = problem(response, 401, "token-expired")
    assert f"token {token.id} expired" in body["detail"]
    assert 'error="invalid_token"' in response.headers["www-authenticate"]
    # and a token without an expiry still works
    assert api.client.get("/cases", headers=api.auth("admin")).status_code == 200


def test_last_use_is_written_at_most_once_a_minute(api: Api) -> None:
    # given a token never used
    token, secret = api.tokens.create("admin", None, None, api.clock.now())
    assert token.last_used_at is None
    first = api.clock.now()
    # when it is used, then again and again within the minute
    for _ in range(3):
        assert api.client.get("/cases", headers=_bearer(secret)).status_code == 200
        api.clock.advance(timedelta(seconds=20))
    # then the first use is what is recorded (the later ones wrote nothing)
    stored = api.tokens.get(token.id)
    assert stored is not None and stored.last_used_at == first
    # when it is used a minute or more after the recorded use
    api.clock.advance(timedelta(seconds=1))
    assert api.client.get("/cases", headers=_bearer(secret)).status_code == 200
    # then that use is recorded
    stored = api.tokens.get(token.id)
    assert stored is not None and stored.last_used_at == first + timedelta(seconds=61)


def test_record_use_writes_only_when_the_recorded_use_is_a_minute_old(api: Api) -> None:
    token, _ = api.tokens.create("buyer", "b1", None, api.clock.now())
    now = api.clock.now()
    assert api.tokens.record_use(token, now) is True
    # a request holding the token as read before that write: the UPDATE itself refuses
    assert api.tokens.record_use(token, now + timedelta(seconds=59)) is False
    fresh = api.tokens.get(token.id)
    assert fresh is not None
    # the token as read now: no query at all within the minute
    assert api.tokens.record_use(fresh, now + timedelta(seconds=30)) is False
    assert api.tokens.record_use(fresh, now + timedelta(seconds=60)) is True
