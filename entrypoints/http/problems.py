"""Errors as RFC 9457 problem details (``application/problem+json``), one stable ``type`` each.

Every refusal of the service layer, every malformed request and every failure of the
infrastructure ends here as ``{"type", "title", "status", "detail", "instance", ...}`` with the
extension members a client can act on (``field``, ``allowed``, ``rule``, ``current_version``).
Bad input is never a 500: a 500 is a bug, logged with its traceback.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy.exc import OperationalError
from starlette.exceptions import HTTPException as StarletteHTTPException

from workflow.errors import (
    AftersalesError,
    Conflict,
    Forbidden,
    IdempotencyKeyReused,
    InvalidInput,
    NotAllowed,
    NotFound,
    PolicyRefusal,
    StateConflict,
)

PROBLEM_JSON = "application/problem+json"
#: Problem types are URI references resolved against the API's base URL (RFC 9457 §3.1.1);
#: docs/api.md lists them.
TYPE_BASE = "/problems/"

logger = logging.getLogger("aftersales.http")


@dataclass(frozen=True)
class ProblemType:
    slug: str
    status: int
    title: str

    @property
    def uri(self) -> str:
        return TYPE_BASE + self.slug


_TYPES = (
    ProblemType("malformed-request", 400, "The request is malformed"),
    ProblemType("unauthorized", 401, "A valid bearer token is required"),
    ProblemType("token-expired", 401, "The bearer token has expired"),
    ProblemType("forbidden", 403, "This token may not do this"),
    ProblemType("not-found", 404, "No such resource"),
    ProblemType("method-not-allowed", 405, "Method not allowed on this resource"),
    ProblemType("illegal-transition", 409, "The trigger cannot fire in the case's state"),
    ProblemType("conflict", 409, "The case changed meanwhile"),
    ProblemType("state-conflict", 409, "The resource's current state does not allow this"),
    ProblemType("idempotency-key-in-use", 409, "A request with this idempotency key is running"),
    ProblemType("idempotency-key-reused", 409, "The idempotency key was used for another request"),
    ProblemType("dead-letter-still-fails", 409, "The dead letter still cannot apply"),
    ProblemType("precondition-failed", 412, "The case is not at the version given in If-Match"),
    ProblemType("payload-too-large", 413, "The request body is too large"),
    ProblemType("unsupported-media-type", 415, "The request body must be JSON"),
    ProblemType("invalid-input", 422, "The input is invalid"),
    ProblemType("policy-refusal", 422, "Refused by the after-sales policy"),
    ProblemType("rate-limited", 429, "Too many requests"),
    ProblemType("internal-error", 500, "Internal error"),
    ProblemType("service-unavailable", 503, "A service this request needs is unavailable"),
)
PROBLEM_TYPES: dict[str, ProblemType] = {t.slug: t for t in _TYPES}


class Problem(BaseModel):
    """RFC 9457 problem details, with this API's extension members where they apply."""

    model_config = ConfigDict(extra="allow", title="Problem")

    type: str = Field(
        description="Stable identifier of the kind of problem, e.g. /problems/conflict"
    )
    title: str
    status: int
    detail: str | None = None
    instance: str | None = Field(default=None, description="The request path.")
    field: str | None = Field(
        default=None,
        description="The input field at fault (invalid-input), dotted, e.g. body.items.0.sku",
    )
    errors: list[dict[str, Any]] | None = Field(
        default=None, description="Every invalid field: [{field, message}] (invalid-input)."
    )
    allowed: list[str] | None = Field(
        default=None, description="Triggers this caller may fire now (illegal-transition)."
    )
    rule: str | None = Field(
        default=None, description="The policy rule that refused (policy-refusal)."
    )
    current_version: int | None = Field(
        default=None, description="The case's version now (precondition-failed, conflict)."
    )


class ProblemError(Exception):
    """Raised by the HTTP layer itself (auth, limits, headers) to answer with a problem."""

    def __init__(
        self,
        slug: str,
        detail: str | None = None,
        *,
        headers: Mapping[str, str] | None = None,
        **extra: Any,
    ) -> None:
        super().__init__(detail or slug)
        self.slug = slug
        self.detail = detail
        self.headers = dict(headers or {})
        self.extra = extra


def problem_response(
    slug: str,
    detail: str | None,
    instance: str | None,
    headers: Mapping[str, str] | None = None,
    **extra: Any,
) -> JSONResponse:
    kind = PROBLEM_TYPES[slug]
    body: dict[str, Any] = {
        "type": kind.uri,
        "title": kind.title,
        "status": kind.status,
        "detail": " ".join(detail.split()) if detail else None,
        "instance": instance,
    }
    body.update({key: value for key, value in extra.items() if value is not None})
    return JSONResponse(
        body, status_code=kind.status, headers=dict(headers or {}), media_type=PROBLEM_JSON
    )


def _field(location: tuple[Any, ...] | list[Any]) -> str:
    return ".".join(str(part) for part in location)


def validation_problem(errors: list[Any], instance: str | None) -> JSONResponse:
    """FastAPI's request validation errors: the first names ``field``, all are in ``errors``."""
    listed = [{"field": _field(e.get("loc", ())), "message": str(e.get("msg", ""))} for e in errors]
    if any(e.get("type") == "json_invalid" for e in errors):
        return problem_response("malformed-request", "the body is not valid JSON", instance)
    first = listed[0] if listed else {"field": None, "message": "invalid input"}
    detail = f"{first['field']}: {first['message']}" if first["field"] else first["message"]
    # A header that breaks its syntax makes the request malformed (400); a value the body, the
    # path or the query gets wrong is invalid input (422).
    headers_only = bool(errors) and all(tuple(e.get("loc", ()))[:1] == ("header",) for e in errors)
    return problem_response(
        "malformed-request" if headers_only else "invalid-input",
        detail,
        instance,
        field=first["field"] or None,
        errors=listed,
    )


def response_for(error: Exception, instance: str | None) -> JSONResponse | None:
    """The problem response for an error a request may raise, or None for a bug."""
    if isinstance(error, ProblemError):
        return problem_response(error.slug, error.detail, instance, error.headers, **error.extra)
    if isinstance(error, NotFound):
        return problem_response("not-found", str(error), instance)
    if isinstance(error, Forbidden):
        return problem_response("forbidden", str(error), instance)
    if isinstance(error, NotAllowed):
        return problem_response("illegal-transition", str(error), instance, allowed=error.allowed)
    if isinstance(error, Conflict):
        return problem_response(
            "conflict", str(error), instance, current_version=error.current_version
        )
    if isinstance(error, PolicyRefusal):
        return problem_response("policy-refusal", str(error), instance, rule=error.rule)
    if isinstance(error, IdempotencyKeyReused):
        return problem_response(
            "idempotency-key-reused", str(error), instance, field="header.Idempotency-Key"
        )
    if isinstance(error, StateConflict):
        return problem_response("state-conflict", str(error), instance, field=error.field)
    if isinstance(error, InvalidInput):
        return problem_response("invalid-input", str(error), instance, field=error.field)
    if isinstance(error, AftersalesError):
        return problem_response("invalid-input", str(error), instance, code=error.code)
    if isinstance(error, RequestValidationError):
        return validation_problem(list(error.errors()), instance)
    if isinstance(error, OverflowError):
        # Times before year 1 or after 9999 once moved to UTC, and the like.
        return problem_response("invalid-input", f"a value is out of range: {error}", instance)
    if isinstance(error, OperationalError):
        logger.warning("database unavailable: %s", str(error.orig or error).splitlines()[0])
        return problem_response(
            "service-unavailable", "the database is unavailable", instance, {"Retry-After": "5"}
        )
    return None


def http_exception_response(error: StarletteHTTPException, instance: str | None) -> JSONResponse:
    """Routing's own errors: unknown paths and methods."""
    if error.status_code == 404:
        return problem_response("not-found", "no such resource", instance)
    if error.status_code == 405:
        return problem_response(
            "method-not-allowed", str(error.detail), instance, dict(error.headers or {})
        )
    slug = {400: "malformed-request", 401: "unauthorized", 403: "forbidden"}.get(
        error.status_code, "malformed-request"
    )
    return problem_response(slug, str(error.detail), instance, dict(error.headers or {}))


def install(app: FastAPI) -> None:
    """Register the handlers that turn every error into a problem response."""

    async def on_error(request: Request, error: Exception) -> JSONResponse:
        response = response_for(error, request.url.path)
        if response is not None:
            return response
        logger.exception("unhandled error on %s %s", request.method, request.url.path)
        return problem_response("internal-error", "an unexpected error occurred", request.url.path)

    async def on_http_exception(request: Request, error: Exception) -> JSONResponse:
        assert isinstance(error, StarletteHTTPException)
        return http_exception_response(error, request.url.path)

    for error_type in (
        ProblemError,
        AftersalesError,
        RequestValidationError,
        OverflowError,
        OperationalError,
        Exception,
    ):
        app.add_exception_handler(error_type, on_error)
    app.add_exception_handler(StarletteHTTPException, on_http_exception)


#: What each status means on an operation, for the OpenAPI document.
DESCRIPTIONS = {
    400: "Malformed request: the body is not JSON, or a header is malformed (malformed-request).",
    401: "No bearer token, or an unknown or revoked one (unauthorized), or an expired one "
    "(token-expired).",
    403: "The token's role or owner may not do this (forbidden).",
    404: "No such case or dead letter (not-found).",
    409: "Illegal transition with the allowed triggers (illegal-transition), a request the "
    "resource's current state refuses (state-conflict), a concurrent change (conflict), a "
    "running twin of this idempotent request (idempotency-key-in-use), or an idempotency key "
    "used before for another request (idempotency-key-reused).",
    412: "If-Match names another version than the case's (precondition-failed); nothing changed.",
    413: "The body is larger than the limit (payload-too-large).",
    415: "The body is not JSON (unsupported-media-type).",
    422: "Invalid input, naming the field (invalid-input); refused by a policy rule, naming it "
    "(policy-refusal).",
    429: "Rate limit exceeded; see Retry-After (rate-limited).",
    503: "The database is unavailable; retry later (service-unavailable).",
}


def responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """The ``responses=`` of a route: each status answered with a ``Problem``."""
    return {status: {"model": Problem, "description": DESCRIPTIONS[status]} for status in statuses}
