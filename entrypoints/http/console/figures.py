"""Per-merchant service figures over a period: median review time, the share of cases where a
timeout acted for the merchant, and the dispute rate (``CaseService.merchant_figures``, the
data of ``GET /stats/merchants``). Admins see every merchant, a merchant its own."""

from __future__ import annotations

from datetime import date, datetime, time, timedelta
from typing import Annotated

from fastapi import APIRouter, Query, Request
from fastapi.responses import Response

from entrypoints import views
from entrypoints.http.console.web import PREFIX, ConsoleError, ConsoleRoute, render, viewer_of
from entrypoints.http.context import api_of

router = APIRouter(prefix=PREFIX, route_class=ConsoleRoute, include_in_schema=False)

#: The default period: the last 30 days, today included.
DEFAULT_DAYS = 30
#: The longest period one page sums up.
MAX_DAYS = 366


def _day(value: str, name: str) -> date | None:
    if not value.strip():
        return None
    try:
        return date.fromisoformat(value.strip())
    except ValueError:
        raise ConsoleError(422, f"{name}: a date such as 2026-12-01") from None


@router.get("/figures")
def figures(
    request: Request,
    start: Annotated[str, Query(alias="from", max_length=10)] = "",
    end: Annotated[str, Query(alias="to", max_length=10)] = "",
) -> Response:
    viewer = viewer_of(request)
    api = api_of(request)
    today = api.clock.now().astimezone(viewer.zone).date()
    last = _day(end, "to") or today
    first = _day(start, "from") or last - timedelta(days=DEFAULT_DAYS - 1)
    if last < first or (last - first).days >= MAX_DAYS:
        raise ConsoleError(422, f"the period runs from a day to a later one, {MAX_DAYS} at most")
    # Whole days in the viewer's zone: [first 00:00, the day after last 00:00).
    opens = datetime.combine(first, time(), viewer.zone)
    closes = datetime.combine(last + timedelta(days=1), time(), viewer.zone)
    found = api.cases.merchant_figures(opens, closes, viewer.principal.actor())
    rows = [
        {
            "figures": row,
            "median": views.span(timedelta(seconds=row.median_review_seconds))
            if row.median_review_seconds is not None
            else "—",
        }
        for row in found
    ]
    return render(
        request, "figures.html", viewer, rows=rows, first=first.isoformat(), last=last.isoformat()
    )
