"""The queue: the viewer's cases with their next deadline as a countdown and who it waits for;
merchants select cases there for a bulk action.

Buyers and merchants see their own cases only: the query is narrowed to them before the
service (which checks again) runs it.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Request
from fastapi.responses import Response

from entrypoints import views
from entrypoints.http.console.bulk import BULK_TRIGGERS
from entrypoints.http.console.case_page import waits_for
from entrypoints.http.console.web import PREFIX, ConsoleRoute, Viewer, redirect, render, viewer_of
from entrypoints.http.context import api_of
from entrypoints.http.schemas import MAX_ID, Ident
from entrypoints.http.scopes import TokenRole
from workflow.ports import CaseQuery
from workflow.states import CaseState, CaseType

router = APIRouter(prefix=PREFIX, route_class=ConsoleRoute, include_in_schema=False)

#: Cases on one page of the queue.
PAGE = 50


def _own(viewer: Viewer, merchant_id: str | None, buyer_id: str | None) -> tuple[str | None, ...]:
    role, subject = viewer.principal.role, viewer.principal.subject
    if role is TokenRole.MERCHANT:
        return subject, buyer_id
    if role is TokenRole.BUYER:
        return merchant_id, subject
    return merchant_id, buyer_id


@router.get("")
def home() -> Response:
    return redirect(f"{PREFIX}/queue")


@router.get("/queue")
def queue(
    request: Request,
    state: Annotated[CaseState | None, Query()] = None,
    type: Annotated[CaseType | None, Query()] = None,
    merchant_id: Annotated[Ident | None, Query()] = None,
    buyer_id: Annotated[Ident | None, Query()] = None,
    order_id: Annotated[Ident | None, Query()] = None,
    after: Annotated[int | None, Query(ge=0, le=MAX_ID)] = None,
) -> Response:
    viewer = viewer_of(request)
    merchant, buyer = _own(viewer, merchant_id, buyer_id)
    query = CaseQuery(
        state=state,
        type=type,
        merchant_id=merchant,
        buyer_id=buyer,
        order_id=order_id,
        after_id=after,
        limit=PAGE + 1,
    )
    api = api_of(request)
    found = api.cases.list(query, viewer.principal.actor())
    page = found[:PAGE]
    now = api.clock.now()
    next_after = page[-1].case.id if len(found) > PAGE else None
    rows = [
        {
            "view": view,
            "countdown": views.relative(view.deadline.due_at, now) if view.deadline else "—",
            "overdue": view.deadline is not None and view.deadline.due_at <= now,
            "waits_for": waits_for(view.deadline),
        }
        for view in page
    ]
    filters = {
        "state": state.value if state else "",
        "type": type.value if type else "",
        "merchant_id": merchant_id or "",
        "buyer_id": buyer_id or "",
        "order_id": order_id or "",
    }
    return render(
        request,
        "queue.html",
        viewer,
        rows=rows,
        filters=filters,
        states=list(CaseState),
        types=list(CaseType),
        next_after=next_after,
        next_url=str(request.url.include_query_params(after=next_after)) if next_after else None,
        bulk_triggers=BULK_TRIGGERS,
    )
