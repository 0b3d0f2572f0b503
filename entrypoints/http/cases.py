"""``/cases``: submit, read, list, fire triggers, history, diagram, timers, deadline extension.

Each route authenticates, calls one ``CaseService`` method as the token's actor and shapes the
answer with ``entrypoints.views``. Ownership is the engine's check (``Forbidden``, 403); the
routes only refuse roles that never use them (producers) before calling the service.
"""

from __future__ import annotations

import re
from datetime import timedelta
from enum import StrEnum
from typing import Annotated, Any

from fastapi import APIRouter, Header, Path, Query, Request
from fastapi.responses import JSONResponse, Response

from entrypoints import views
from entrypoints.http.auth import Authenticated, Principal, require
from entrypoints.http.context import api_of, idempotent, json_response
from entrypoints.http.problems import ProblemError, responses
from entrypoints.http.schemas import (
    MAX_ID,
    CaseList,
    CaseOut,
    DiagramOut,
    ExtendIn,
    FireIn,
    FireOut,
    HistoryEntry,
    Ident,
    TimersOut,
)
from entrypoints.http.scopes import TokenRole
from workflow import channels, engine
from workflow.diagram import mermaid
from workflow.errors import Conflict, InvalidInput
from workflow.model import Actor, Case, Timer
from workflow.payloads import Application
from workflow.queries import MAX_PAGE, CaseQuery, CaseSort, Cursor
from workflow.service import CaseView, FireResult
from workflow.states import CaseState, CaseType

router = APIRouter(prefix="/cases", tags=["cases"])

CaseId = Annotated[int, Path(ge=1, le=MAX_ID, description="The case's id.")]
IdempotencyKey = Annotated[
    str | None,
    Header(
        alias="Idempotency-Key",
        min_length=1,
        max_length=255,
        pattern=r"^[!-~]+$",
        description="A repeat of this request with the same key (same token, method and path) "
        "returns the first response and does nothing again. A key names one request: sent "
        "with another request, to this endpoint or another, it is refused (422 "
        "idempotency-key-reused). Kept 24 h.",
    ),
]
#: RFC 9110 entity tags: ``*`` or a list of ``"tag"`` / ``W/"tag"``.
ETAGS = r'^(\*|(W/)?"[!#-~]*"( *, *(W/)?"[!#-~]*")*)$'
IfMatch = Annotated[
    str | None,
    Header(
        alias="If-Match",
        max_length=1000,
        pattern=ETAGS,
        description='The case\'s ETag ("<version>") as last read: when the case has moved '
        "since, the request fails with 412 and changes nothing.",
    ),
]
IfNoneMatch = Annotated[
    str | None,
    Header(
        alias="If-None-Match",
        max_length=1000,
        pattern=ETAGS,
        description="304 when the case is unchanged.",
    ),
]

_ETAG = re.compile(r'\s*(W/)?"([^"]*)"\s*(,|$)')


def etag(version: int) -> str:
    return f'"{version}"'


def parse_if_match(value: str | None) -> list[int] | None:
    """The versions an If-Match names; None for ``*`` or no header. A weak tag or one that is not
    a version can never match (strong comparison, RFC 9110 §13.1.1): it counts as version 0."""
    if value is None or value.strip() == "*":
        return None
    versions: list[int] = []
    position = 0
    text = value.strip()
    while position < len(text):
        match = _ETAG.match(text, position)
        if match is None or match.end() == position:
            raise ProblemError(
                "malformed-request",
                'If-Match must be an entity tag such as "3" (the case\'s ETag), or *',
                field="header.If-Match",
            )
        weak, tag = match.group(1), match.group(2)
        versions.append(int(tag) if not weak and tag.isdigit() and len(tag) < 19 else 0)
        position = match.end()
    if not versions:
        raise ProblemError("malformed-request", "If-Match is empty", field="header.If-Match")
    return versions


def _expected_version(
    request: Request, principal: Principal, case_id: int, if_match: str | None
) -> int | None:
    versions = parse_if_match(if_match)
    if versions is None:
        return None
    if len(versions) == 1:
        return versions[0]
    # Several tags: whichever is the case's version now; the service compares again under its
    # transaction, so a transition between this read and that one still gets 412.
    current = api_of(request).cases.get(case_id, principal.actor()).case.version
    return current if current in versions else versions[0]


def case_data(case: Case, deadline: Timer | None, actor: Actor) -> dict[str, Any]:
    return {
        **views.case_json(case, deadline),
        "allowed_triggers": engine.allowed_triggers(case, actor),
    }


def _case_response(view: CaseView, principal: Principal, status: int = 200) -> JSONResponse:
    headers = {"ETag": etag(view.case.version)}
    if status == 201:
        headers["Location"] = f"/cases/{view.case.id}"
    return json_response(
        CaseOut, case_data(view.case, view.deadline, principal.actor()), status, headers
    )


def _fire_response(result: FireResult, principal: Principal) -> JSONResponse:
    data = {
        **views.fire_json(result),
        "case": case_data(result.case, result.deadline, principal.actor()),
    }
    return json_response(FireOut, data, headers={"ETag": etag(result.case.version)})


def _service_key(principal: Principal, key: str | None) -> str | None:
    # Namespaced by token: two clients choosing the same key never share a case or a transition.
    return f"api:{principal.token.id}:{key}" if key else None


def _source(principal: Principal) -> str:
    return channels.api_token(principal.token.id)


def _stale(error: Conflict, expected: int | None) -> ProblemError | None:
    if expected is None or error.current_version is None:
        return None
    return ProblemError(
        "precondition-failed",
        str(error),
        headers={"ETag": etag(error.current_version)},
        current_version=error.current_version,
    )


@router.post(
    "",
    status_code=201,
    response_model=CaseOut,
    summary="Submit an application",
    description="Apply for after-sales on an order of record (buyers for their own orders, "
    "admins for anyone). 201 with the case, its `Location` and `ETag`. No such order for that "
    "buyer is 404 (the same whether the order does not exist or is someone else's). An "
    "application the policy refuses (outside the window, units already claimed or refunded, "
    "nothing left of the payment) is 422 `policy-refusal` naming the rule.",
    responses={
        201: {"description": "The new case.", "headers": {"ETag": {"schema": {"type": "string"}}}},
        **responses(400, 401, 403, 404, 409, 413, 415, 422, 429, 503),
    },
)
def submit_case(
    request: Request,
    application: Application,
    principal: Authenticated,
    idempotency_key: IdempotencyKey = None,
) -> Response:
    require(principal, TokenRole.ADMIN, TokenRole.BUYER)
    api = api_of(request)

    def action() -> Response:
        key = _service_key(principal, idempotency_key)
        view = api.cases.submit(application, principal.actor(), key, source=_source(principal))
        return _case_response(view, principal, 201)

    return idempotent(request, principal, idempotency_key, action)


#: The query parameters that say where a page starts.
_PAGING = ("cursor", "after")


class SortOrder(StrEnum):
    ASC = "asc"
    DESC = "desc"


#: Search text: printable, one line.
SearchText = Annotated[
    str | None,
    Query(
        min_length=1,
        max_length=100,
        pattern=r"^[^\x00-\x1f\x7f]+$",
        description="Search: the case id, the order id, the buyer id, or a return or outbound "
        "tracking number, equal to this (exact, case-sensitive; each an index lookup).",
    ),
]


@router.get(
    "",
    response_model=CaseList,
    summary="List and search cases (the queue)",
    description="Cases matching every filter given, a page at a time, each with its next "
    "deadline, whether it is overdue and who it waits for. Order: `sort` (`id`: submission "
    "order; `deadline`: the pending deadline, soonest first, cases without one after all that "
    "have one; `age`: submission time, oldest first) and `order` (`desc` reverses it, the "
    "cases without a deadline still last). Paging: pass `next_cursor` back as `cursor` with "
    "the same filters and sort; `after` (a case id, the sort by id ascending only) still works "
    "and `next_after` still answers it. Buyers and merchants see only their own cases (a filter "
    "naming someone else is 403).",
    responses=responses(401, 403, 422, 429, 503),
)
def list_cases(
    request: Request,
    principal: Authenticated,
    state: Annotated[
        list[CaseState] | None,
        Query(max_length=len(CaseState), description="Any of these states (repeat the parameter)."),
    ] = None,
    type: Annotated[CaseType | None, Query(description="The case type.")] = None,
    merchant_id: Ident | None = None,
    buyer_id: Ident | None = None,
    order_id: Ident | None = None,
    q: SearchText = None,
    overdue: Annotated[
        bool, Query(description="Only cases whose pending deadline has passed.")
    ] = False,
    deadline_within_hours: Annotated[
        int | None,
        Query(
            ge=0,
            le=8760,
            description="Only cases whose pending deadline is due within this many hours from "
            "now (overdue ones included).",
        ),
    ] = None,
    disputed: Annotated[
        bool | None,
        Query(
            description="true: only cases ever disputed (escalated to the platform); false: "
            "only cases never disputed."
        ),
    ] = None,
    sort: Annotated[CaseSort, Query(description="The order of the list.")] = CaseSort.ID,
    order: Annotated[SortOrder, Query(description="asc or desc.")] = SortOrder.ASC,
    cursor: Annotated[
        str | None,
        Query(
            min_length=1,
            max_length=200,
            pattern=r"^[A-Za-z0-9_-]+$",
            description="The previous page's `next_cursor`.",
        ),
    ] = None,
    after: Annotated[
        int | None,
        Query(ge=0, le=MAX_ID, description="Cases after this id (the sort by id ascending)."),
    ] = None,
    limit: Annotated[int, Query(ge=1, le=MAX_PAGE)] = 50,
) -> Response:
    actor = principal.actor()
    if cursor is not None and after is not None:
        raise InvalidInput("give cursor or after, not both", "query.after")
    start = None
    if cursor is not None:
        try:
            start = Cursor.decode(cursor)
        except ValueError:
            raise InvalidInput(
                "not a cursor of this list: pass next_cursor back unchanged", "query.cursor"
            ) from None
    query = CaseQuery(
        states=frozenset(state or ()),
        type=type,
        merchant_id=merchant_id,
        buyer_id=buyer_id,
        order_id=order_id,
        text=q,
        overdue=overdue,
        due_within=timedelta(hours=deadline_within_hours)
        if deadline_within_hours is not None
        else None,
        disputed=disputed,
        sort=sort,
        descending=order is SortOrder.DESC,
        after=start,
        after_id=after,
        limit=limit,
    )
    page = api_of(request).cases.search(query, actor)
    next_cursor = page.next.encode() if page.next is not None else None
    by_id = sort is CaseSort.ID and order is SortOrder.ASC
    next_after = page.next.case_id if page.next is not None and by_id else None
    headers = {}
    if next_cursor is not None:
        # Clients that page by id are sent on by id, as before the cursor existed.
        step = {"after": next_after} if cursor is None and next_after else {"cursor": next_cursor}
        link = request.url.remove_query_params(_PAGING).include_query_params(**step)
        headers["Link"] = f'<{link.path}?{link.query}>; rel="next"'
    data = {
        "cases": [
            {
                **case_data(row.case, row.deadline, actor),
                "waits_for": row.waits_for,
                "overdue": row.overdue(page.as_of),
            }
            for row in page.rows
        ],
        "as_of": page.as_of,
        "next_cursor": next_cursor,
        "next_after": next_after,
    }
    return json_response(CaseList, data, headers=headers)


@router.get(
    "/{case_id}",
    response_model=CaseOut,
    summary="Get a case",
    description="The case with its pending deadline and the triggers the caller may fire now; "
    '`ETag: "<version>"` for `If-Match`.',
    responses={
        200: {"description": "The case.", "headers": {"ETag": {"schema": {"type": "string"}}}},
        304: {"description": "Unchanged since the `If-None-Match` ETag."},
        **responses(400, 401, 403, 404, 422, 429, 503),
    },
)
def get_case(
    request: Request,
    case_id: CaseId,
    principal: Authenticated,
    if_none_match: IfNoneMatch = None,
) -> Response:
    view = api_of(request).cases.get(case_id, principal.actor())
    tag = etag(view.case.version)
    if if_none_match is not None and (
        if_none_match.strip() == "*"
        or tag in [part.strip().removeprefix("W/") for part in if_none_match.split(",")]
    ):
        return Response(status_code=304, headers={"ETag": tag})
    return _case_response(view, principal)


@router.post(
    "/{case_id}/transitions",
    response_model=FireOut,
    summary="Fire a trigger",
    description="Move the case by a trigger as the caller. 409 `illegal-transition` lists the "
    "triggers allowed now; with `If-Match` on a stale version, 412 and nothing changes. "
    "Admins always give a `reason`.",
    responses={
        200: {
            "description": "The transitions written (or, replayed, the first ones).",
            "headers": {"ETag": {"schema": {"type": "string"}}},
        },
        **responses(400, 401, 403, 404, 409, 412, 413, 415, 422, 429, 503),
    },
)
def fire_trigger(
    request: Request,
    case_id: CaseId,
    body: FireIn,
    principal: Authenticated,
    idempotency_key: IdempotencyKey = None,
    if_match: IfMatch = None,
) -> Response:
    actor = principal.actor()
    api = api_of(request)

    def action() -> Response:
        expected = _expected_version(request, principal, case_id, if_match)
        try:
            result = api.cases.fire(
                case_id,
                body.trigger,
                actor,
                body.data,
                body.reason,
                idempotency_key=_service_key(principal, idempotency_key),
                expected_version=expected,
                source=_source(principal),
            )
        except Conflict as error:
            raise _stale(error, expected) or error from None
        return _fire_response(result, principal)

    return idempotent(request, principal, idempotency_key, action)


@router.get(
    "/{case_id}/history",
    response_model=list[HistoryEntry],
    summary="The case's transition log",
    responses=responses(401, 403, 404, 422, 429, 503),
)
def case_history(request: Request, case_id: CaseId, principal: Authenticated) -> Response:
    records = api_of(request).cases.history(case_id, principal.actor())
    data = [views.record_json(record) for record in records]
    return JSONResponse([HistoryEntry.model_validate(e).model_dump(mode="json") for e in data])


@router.get(
    "/{case_id}/diagram",
    response_model=DiagramOut,
    summary="The case's state diagram",
    description="Mermaid `stateDiagram-v2` of the case's type, its current state highlighted.",
    responses=responses(401, 403, 404, 422, 429, 503),
)
def case_diagram(request: Request, case_id: CaseId, principal: Authenticated) -> Response:
    case = api_of(request).cases.get(case_id, principal.actor()).case
    data = {"type": case.type, "state": case.state, "mermaid": mermaid(case.type, case.state)}
    return json_response(DiagramOut, data)


@router.get(
    "/{case_id}/timers",
    response_model=TimersOut,
    summary="The case's timers",
    description="The pending deadline and every timer the case armed, with how late fired "
    "ones fired.",
    responses=responses(401, 403, 404, 422, 429, 503),
)
def case_timers(request: Request, case_id: CaseId, principal: Authenticated) -> Response:
    api = api_of(request)
    view = api.cases.get(case_id, principal.actor())
    timers = [
        {
            "id": reading.timer.id,
            "kind": reading.timer.kind,
            "trigger": reading.timer.trigger,
            "state": reading.timer.state,
            "status": reading.timer.status.value,
            "due_at": reading.timer.due_at,
            "created_at": reading.timer.created_at,
            "fired_at": reading.timer.fired_at,
            "lateness_ms": reading.lateness_ms,
        }
        for reading in api.readings.case_timers(case_id)
    ]
    data = {"case_id": case_id, "deadline": views.deadline_json(view.deadline), "timers": timers}
    return json_response(TimersOut, data)


@router.post(
    "/{case_id}/deadline-extensions",
    response_model=FireOut,
    summary="Extend the current deadline (admin)",
    description="Move the case's pending deadline later, by `hours` or to `until`, with a "
    "`reason` kept in the history. Admins only.",
    responses={
        200: {
            "description": "The audited extension.",
            "headers": {"ETag": {"schema": {"type": "string"}}},
        },
        **responses(400, 401, 403, 404, 409, 412, 413, 415, 422, 429, 503),
    },
)
def extend_deadline(
    request: Request,
    case_id: CaseId,
    body: ExtendIn,
    principal: Authenticated,
    idempotency_key: IdempotencyKey = None,
    if_match: IfMatch = None,
) -> Response:
    require(principal, TokenRole.ADMIN)
    api = api_of(request)

    def action() -> Response:
        expected = _expected_version(request, principal, case_id, if_match)
        try:
            result = api.cases.extend_deadline(
                case_id,
                principal.actor(),
                body.reason,
                until=body.until,
                hours=body.hours,
                expected_version=expected,
                source=_source(principal),
            )
        except Conflict as error:
            raise _stale(error, expected) or error from None
        return _fire_response(result, principal)

    return idempotent(request, principal, idempotency_key, action)
