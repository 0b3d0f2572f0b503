"""``/stats``: figures over a period for the people who run the service.

``/stats/merchants``: per merchant, of the cases submitted in the period, the median time to the
end of the review, the share of cases where a deadline waiting for the merchant fired, and the
dispute rate (``CaseService.merchant_figures``). Admins see every merchant's, a merchant its own.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Annotated

from fastapi import APIRouter, Query, Request
from fastapi.responses import Response

from entrypoints.http.auth import Authenticated, require
from entrypoints.http.context import api_of, json_response
from entrypoints.http.problems import responses
from entrypoints.http.schemas import Ident, MerchantStats
from entrypoints.http.scopes import TokenRole
from workflow.payloads import AwareInstant

router = APIRouter(prefix="/stats", tags=["stats"])

#: The period when none is given: the last 30 days.
DEFAULT_PERIOD = timedelta(days=30)


@router.get(
    "/merchants",
    response_model=MerchantStats,
    summary="Merchants' service figures over a period",
    description="Per merchant with cases submitted in [`from`, `to`): the cases, the median "
    "time from submission to the end of the review (approved, rejected, or a timeout acted), "
    "the share of cases where a deadline waiting for the merchant fired, and the share ever "
    "disputed. Admins: every merchant (or `merchant_id`'s); a merchant: its own only. Default "
    "period: the 30 days to now; at most 366 days.",
    responses=responses(401, 403, 422, 429, 503),
)
def merchant_stats(
    request: Request,
    principal: Authenticated,
    start: Annotated[
        AwareInstant | None,
        Query(alias="from", description="Start (inclusive), with a UTC offset."),
    ] = None,
    end: Annotated[
        AwareInstant | None,
        Query(alias="to", description="End (exclusive), with a UTC offset; default now."),
    ] = None,
    merchant_id: Ident | None = None,
) -> Response:
    require(principal, TokenRole.ADMIN, TokenRole.MERCHANT)
    cases = api_of(request).cases
    end = end or cases.clock.now()
    start = start or end - DEFAULT_PERIOD
    figures = cases.merchant_figures(start, end, principal.actor(), merchant_id)
    data = {
        "start": start,
        "end": end,
        "merchants": [
            {
                "merchant_id": f.merchant_id,
                "cases": f.cases,
                "reviewed": f.reviewed,
                "median_review_seconds": f.median_review_seconds,
                "timed_out": f.timed_out,
                "timeout_share": f.timeout_share,
                "disputed": f.disputed,
                "dispute_rate": f.dispute_rate,
            }
            for f in figures
        ],
    }
    return json_response(MerchantStats, data)
