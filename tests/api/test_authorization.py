"""Who may do what: 401 without a live token, and the role × endpoint × ownership matrix.

Buyers and merchants see and act on their own cases only (``other buyer`` / ``other merchant``
hold tokens for b2 / m2, the case is b1's at m1); producers only send events of their source;
admins do everything. Every refusal is a 403 problem and changes nothing.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from httpx import Response

from .conftest import ADMIN_REASON, BACKENDS, Api, application, build_api, fresh_database, problem

CALLERS = {
    "admin": "admin:ops1",
    "buyer": "buyer:b1",
    "other buyer": "buyer:b2",
    "merchant": "merchant:m1",
    "other merchant": "merchant:m2",
    "producer": "producer:sf-express",
}
#: What each caller fires in the ``fire`` row: a trigger its role may fire on a submitted case.
OWN_TRIGGER = {
    "admin": {"trigger": "force_close", **ADMIN_REASON},
    "buyer": {"trigger": "cancel"},
    "other buyer": {"trigger": "cancel"},
    "merchant": {"trigger": "approve"},
    "other merchant": {"trigger": "approve"},
    "producer": {"trigger": "approve"},
}

_numbers = itertools.count(1)


@dataclass
class Target:
    """What a row acts on: a case of b1 at m1 just submitted, and an open dead letter."""

    case_id: int
    letter_id: int


def _event(source: str, type_: str = "parcel.lost") -> dict[str, Any]:
    return {
        "event_id": f"e-{next(_numbers)}",
        "source": source,
        "type": type_,
        "occurred_at": "2026-11-20T11:00:00+08:00",
        "case_id": 10**9,
    }


Call = Callable[[Api, dict[str, str], Target, str], Response]

ENDPOINTS: dict[str, Call] = {
    "submit": lambda api, h, t, who: api.client.post(
        "/cases", json=api.import_order(application(order_id=f"o-new-{next(_numbers)}")), headers=h
    ),
    "get": lambda api, h, t, who: api.client.get(f"/cases/{t.case_id}", headers=h),
    "list": lambda api, h, t, who: api.client.get("/cases", headers=h),
    "list b1 at m1": lambda api, h, t, who: api.client.get(
        "/cases", params={"buyer_id": "b1", "merchant_id": "m1"}, headers=h
    ),
    "fire": lambda api, h, t, who: api.client.post(
        f"/cases/{t.case_id}/transitions", json=OWN_TRIGGER[who], headers=h
    ),
    "history": lambda api, h, t, who: api.client.get(f"/cases/{t.case_id}/history", headers=h),
    "diagram": lambda api, h, t, who: api.client.get(f"/cases/{t.case_id}/diagram", headers=h),
    "timers": lambda api, h, t, who: api.client.get(f"/cases/{t.case_id}/timers", headers=h),
    "extend deadline": lambda api, h, t, who: api.client.post(
        f"/cases/{t.case_id}/deadline-extensions", json={"hours": 2, **ADMIN_REASON}, headers=h
    ),
    "ingest own source": lambda api, h, t, who: api.client.post(
        "/events", json=_event("sf-express"), headers=h
    ),
    "ingest other source": lambda api, h, t, who: api.client.post(
        "/events", json=_event("wechat-pay", "refund.failed"), headers=h
    ),
    "dead letters": lambda api, h, t, who: api.client.get("/events/dead-letters", headers=h),
    "dead letter": lambda api, h, t, who: api.client.get(
        f"/events/dead-letters/{t.letter_id}", headers=h
    ),
    "replay": lambda api, h, t, who: api.client.post(
        f"/events/dead-letters/{t.letter_id}/replay", json={"reason": "checked"}, headers=h
    ),
    "discard": lambda api, h, t, who: api.client.post(
        f"/events/dead-letters/{t.letter_id}/discard", json={"reason": "checked"}, headers=h
    ),
    "metrics": lambda api, h, t, who: api.client.get("/metrics", headers=h),
}

_ = 403
#: Expected status per endpoint, in the order of CALLERS:
#: admin, buyer, other buyer, merchant, other merchant, producer.
MATRIX: dict[str, tuple[int, int, int, int, int, int]] = {
    "submit": (201, 201, _, _, _, _),
    "get": (200, 200, _, 200, _, _),
    "list": (200, 200, 200, 200, 200, _),
    "list b1 at m1": (200, 200, _, 200, _, _),
    "fire": (200, 200, _, 200, _, _),
    "history": (200, 200, _, 200, _, _),
    "diagram": (200, 200, _, 200, _, _),
    "timers": (200, 200, _, 200, _, _),
    "extend deadline": (200, _, _, _, _, _),
    "ingest own source": (202, _, _, _, _, 202),
    "ingest other source": (202, _, _, _, _, _),
    "dead letters": (200, _, _, _, _, _),
    "dead letter": (200, _, _, _, _, _),
    # The admin is let through; the letter (an unknown case) still cannot apply.
    "replay": (409, _, _, _, _, _),
    "discard": (200, _, _, _, _, _),
    "metrics": (200, _, _, _, _, _),
}

ROWS = [
    pytest.param(endpoint, caller, status, id=f"{endpoint}-{caller.replace(' ', '_')}")
    for endpoint, statuses in MATRIX.items()
    for caller, status in zip(CALLERS, statuses, strict=True)
]


@pytest.fixture(scope="module", params=BACKENDS)
def world(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Api]:
    """One app per backend for the whole matrix (each row makes its own case and letter)."""
    folder: Path = tmp_path_factory.mktemp("matrix")
    with fresh_database(str(request.param), folder) as url:
        yield build_api(url, folder)


@pytest.fixture
def target(world: Api) -> Target:
    case_id = world.submit(order_id=f"o-{next(_numbers)}")
    result = world.events.ingest(_event("sf-express"))
    assert result.letter_id is not None
    return Target(case_id, result.letter_id)


@pytest.mark.parametrize(("endpoint", "caller", "expected"), ROWS)
def test_matrix(world: Api, target: Target, endpoint: str, caller: str, expected: int) -> None:
    # given a case of b1 at m1 and an open dead letter, when the caller calls the endpoint
    response = ENDPOINTS[endpoint](world, world.auth(CALLERS[caller]), target, caller)
    # then it gets the status of the matrix
    assert response.status_code == expected, response.text
    if expected == 403:
        problem(response, 403, "forbidden")
        # and a refusal changed nothing
        assert world.history(target.case_id) == ["submit"]
        letter = world.events.dead_letter(target.letter_id)
        assert (letter.status.value, letter.attempts) == ("open", 1)


def test_own_listing_shows_only_own_cases(world: Api) -> None:
    world.submit(order_id=f"o-{next(_numbers)}", buyer_id="b3", merchant_id="m3")
    for caller, field in (("buyer:b3", "buyer_id"), ("merchant:m3", "merchant_id")):
        cases = world.client.get("/cases", headers=world.auth(caller)).json()["cases"]
        assert cases and {case[field] for case in cases} == {caller.split(":")[1]}


@pytest.mark.parametrize(("endpoint"), list(ENDPOINTS))
def test_every_endpoint_needs_a_token(world: Api, target: Target, endpoint: str) -> None:
    for headers in (
        {},
        {"Authorization": "Bearer ast_not-a-token"},
        {"Authorization": "Basic eDp5"},
    ):
        response = ENDPOINTS[endpoint](world, headers, target, "admin")
        problem(response, 401, "unauthorized")
        assert response.headers["www-authenticate"].startswith("Bearer")
    assert world.history(target.case_id) == ["submit"]


def test_a_revoked_token_stops_working_at_once(world: Api) -> None:
    secret = world.token("admin")
    headers = {"Authorization": f"Bearer {secret}"}
    assert world.client.get("/cases", headers=headers).status_code == 200
    token = world.tokens.authenticate(secret)
    assert token is not None
    world.tokens.revoke(token.id, world.clock.now())
    problem(world.client.get("/cases", headers=headers), 401, "unauthorized")


def test_open_endpoints_need_no_token(world: Api) -> None:
    for path in ("/healthz", "/readyz", "/openapi.json", "/docs"):
        assert world.client.get(path).status_code == 200, path


def test_tokens_are_stored_hashed(world: Api) -> None:
    import sqlalchemy as sa

    from persistence.db import make_engine

    secret = world.token("merchant:m9")
    with make_engine(world.database_url).connect() as connection:
        stored = [tuple(row) for row in connection.execute(sa.text("SELECT * FROM api_tokens"))]
    assert secret not in repr(stored)
    assert secret.startswith("ast_") and len(secret) >= 40
