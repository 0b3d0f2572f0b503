"""What the routes of one app share: the services, the stores, the limits (``app.state.api``)."""

from __future__ import annotations

import hashlib
import itertools
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from fastapi import Request
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel

from config.settings import ApiSettings
from entrypoints.http.auth import Principal, RateLimiter
from entrypoints.http.problems import ProblemError, response_for
from persistence.readings import SqlReadings
from persistence.tokens import SqlIdempotencyStore, SqlTokenStore, StoredResponse
from workflow.clock import Clock
from workflow.events.ingestion import EventService
from workflow.orders_service import OrderService
from workflow.service import CaseService

#: Response headers an idempotent replay repeats.
_REPLAYED_HEADERS = ("content-type", "etag", "location")
#: Prune expired idempotency rows once every this many keyed requests.
_PRUNE_EVERY = 500


@dataclass
class ApiContext:
    settings: ApiSettings
    clock: Clock
    cases: CaseService
    events: EventService
    orders: OrderService
    tokens: SqlTokenStore
    idempotency: SqlIdempotencyStore
    readings: SqlReadings
    rate_limiter: RateLimiter
    auth_failures: RateLimiter
    #: name -> a check that raises (or returns a problem text) when a dependency is down.
    readiness: dict[str, Callable[[], str | None]] = field(default_factory=dict)
    _keyed: itertools.count[int] = field(default_factory=itertools.count)


def api_of(request: Request) -> ApiContext:
    context: ApiContext = request.app.state.api
    return context


def json_response(
    model: type[BaseModel],
    data: Any,
    status: int = 200,
    headers: dict[str, str] | None = None,
) -> JSONResponse:
    """``data`` validated by ``model`` (the documented shape), as JSON."""
    body = model.model_validate(data).model_dump(mode="json")
    return JSONResponse(body, status_code=status, headers=headers)


def fingerprint(request: Request) -> str:
    """What makes two requests the same one: method, path, query and the exact body bytes."""
    digest = hashlib.sha256()
    for part in (request.method, request.url.path, request.url.query):
        digest.update(part.encode("utf-8") + b"\0")
    digest.update(getattr(request.state, "body", b"") or b"")
    return digest.hexdigest()


def idempotent(
    request: Request, principal: Principal, key: str | None, action: Callable[[], Response]
) -> Response:
    """Run ``action`` once per (token, key, method, path); a repeat gets the first response,
    and the key on another endpoint (method, path) is refused with 422.

    Failures that say nothing about the request (a 5xx, a 429) are not kept: the retry runs
    again. Every other answer, errors included, is, for ``ApiSettings.idempotency_hours``.
    """
    if key is None:
        return action()
    api = api_of(request)
    token_id, method, path = principal.token.id, request.method, request.url.path
    now = api.clock.now()
    if next(api._keyed) % _PRUNE_EVERY == 0:
        api.idempotency.prune(now)
    claim = api.idempotency.claim(token_id, key, method, path, fingerprint(request), now)
    if claim.outcome == "replay":
        assert claim.response is not None
        stored = claim.response
        headers = {**stored.headers, "Idempotent-Replayed": "true"}
        media_type = headers.pop("content-type", None)
        return Response(stored.body, stored.status, headers, media_type=media_type)
    if claim.outcome == "in_progress":
        raise ProblemError(
            "idempotency-key-in-use",
            f"a request with Idempotency-Key {key!r} is still running; retry shortly",
            headers={"Retry-After": "1"},
        )
    if claim.outcome == "elsewhere":
        raise ProblemError(
            "idempotency-key-reused",
            f"Idempotency-Key {key!r} was used for {claim.used_for}, not {method} {path}; "
            "a key names one request",
            field="header.Idempotency-Key",
        )
    if claim.outcome == "mismatch":
        raise ProblemError(
            "idempotency-key-reused",
            f"Idempotency-Key {key!r} was used for a different request to {path}",
            field="header.Idempotency-Key",
        )
    try:
        response = action()
    except Exception as error:
        answered = response_for(error, path)
        if answered is None:
            api.idempotency.release(token_id, key, method, path)
            raise
        response = answered
    if response.status_code >= 500 or response.status_code == 429:
        api.idempotency.release(token_id, key, method, path)
        return response
    headers = {
        name: value for name, value in response.headers.items() if name.lower() in _REPLAYED_HEADERS
    }
    body = bytes(response.body).decode("utf-8")
    api.idempotency.complete(
        token_id, key, method, path, StoredResponse(response.status_code, headers, body)
    )
    return response
