"""The queue: the viewer's cases, filtered, searched and sorted, with each case's next deadline
as a countdown and who it waits for; merchants select cases there for a bulk action.

The page asks ``CaseService.search`` (the same query as ``GET /cases``), which narrows it to the
cases the viewer may see: a merchant's own, a buyer's own, all for an admin.
"""

from __future__ import annotations

from datetime import timedelta
from enum import StrEnum
from typing import Annotated, TypeVar

from fastapi import APIRouter, Query, Request
from fastapi.responses import Response
from pydantic import TypeAdapter, ValidationError

from entrypoints import views
from entrypoints.http.console.bulk import BULK_TRIGGERS
from entrypoints.http.console.web import (
    PREFIX,
    ConsoleError,
    ConsoleRoute,
    redirect,
    render,
    viewer_of,
)
from entrypoints.http.context import api_of
from entrypoints.http.schemas import Ident
from workflow.queries import CaseQuery, CaseSort, Cursor
from workflow.states import CaseState, CaseType

router = APIRouter(prefix=PREFIX, route_class=ConsoleRoute, include_in_schema=False)

E = TypeVar("E", bound=StrEnum)

#: Cases on one page of the queue.
PAGE = 50
#: The farthest "deadline within" (a year).
MAX_HOURS = 24 * 365
_IDENT: TypeAdapter[str] = TypeAdapter(Ident)


class Disputed(StrEnum):
    ANY = ""
    YES = "true"
    NO = "false"


class SortOrder(StrEnum):
    ASC = "asc"
    DESC = "desc"


def _choice(kind: type[E], value: str, name: str) -> E | None:
    if not value:
        return None
    try:
        return kind(value)
    except ValueError:
        raise ConsoleError(422, f"{name} {value[:40]!r} is not one of the list") from None


def _hours(value: str) -> int | None:
    if not value.strip():
        return None
    if not value.strip().isdigit() or int(value) > MAX_HOURS:
        raise ConsoleError(422, f"deadline within: a whole number of hours up to {MAX_HOURS}")
    return int(value)


def _ident(value: str) -> str | None:
    value = value.strip()
    if not value:
        return None
    try:
        return _IDENT.validate_python(value)
    except ValidationError:
        raise ConsoleError(
            422, f"{value[:40]!r} is not an id (1-64 of A-Z a-z 0-9 _ . : -)"
        ) from None


@router.get("")
@router.get("/")
def home() -> Response:
    return redirect(f"{PREFIX}/queue")


@router.get("/queue")
def queue(
    request: Request,
    q: Annotated[str, Query(max_length=100, pattern=r"^[^\x00-\x1f\x7f]*$")] = "",
    state: Annotated[str, Query(max_length=40)] = "",
    type: Annotated[str, Query(max_length=40)] = "",
    merchant_id: Annotated[str, Query(max_length=64)] = "",
    overdue: Annotated[bool, Query()] = False,
    deadline_within_hours: Annotated[str, Query(max_length=10)] = "",
    disputed: Annotated[Disputed, Query()] = Disputed.ANY,
    sort: Annotated[CaseSort, Query()] = CaseSort.DEADLINE,
    order: Annotated[SortOrder, Query()] = SortOrder.ASC,
    cursor: Annotated[str | None, Query(max_length=500)] = None,
) -> Response:
    # The parameters are GET /cases's, so a console URL reads as the API call; a form sends
    # its empty fields too, and empty means "any" here.
    viewer = viewer_of(request)
    try:
        after = Cursor.decode(cursor) if cursor else None
    except ValueError:
        raise ConsoleError(400, "this page link is broken; start from the first page") from None
    hours = _hours(deadline_within_hours)
    query = CaseQuery(
        state=_choice(CaseState, state, "state"),
        type=_choice(CaseType, type, "type"),
        merchant_id=_ident(merchant_id),
        text=q.strip() or None,
        overdue=overdue,
        due_within=timedelta(hours=hours) if hours is not None else None,
        disputed=None if disputed is Disputed.ANY else disputed is Disputed.YES,
        sort=sort,
        descending=order is SortOrder.DESC,
        after=after,
        limit=PAGE,
    )
    api = api_of(request)
    page = api.cases.search(query, viewer.principal.actor())
    now = api.clock.now()
    rows = [
        {
            "row": row,
            "countdown": views.relative(row.deadline.due_at, now) if row.deadline else "—",
            "overdue": row.overdue(now),
        }
        for row in page.rows
    ]
    filters = {
        "q": q,
        "state": state,
        "type": type,
        "merchant_id": merchant_id,
        "overdue": overdue,
        "deadline_within_hours": deadline_within_hours,
        "disputed": disputed.value,
        "sort": sort.value,
        "order": order.value,
    }
    next_url = None
    if page.next is not None:
        next_url = str(request.url.include_query_params(cursor=page.next.encode()))
    return render(
        request,
        "queue.html",
        viewer,
        rows=rows,
        filters=filters,
        states=list(CaseState),
        types=list(CaseType),
        sorts=list(CaseSort),
        next_url=next_url,
        first_url=str(request.url.remove_query_params("cursor")) if cursor else None,
        bulk_triggers=BULK_TRIGGERS,
    )
