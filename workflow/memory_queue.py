"""The case queue over the in-memory stores: the filters, order and keyset paging of the SQL
stores' queue query (``persistence/case_search.py``), and the merchants' figures, computed from
the cases, timers and transition log held in memory."""

from __future__ import annotations

import statistics
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime, timedelta

from workflow.model import Case, Timer, TimerStatus, TransitionRecord
from workflow.queries import (
    MERCHANT_TIMEOUTS,
    REVIEW_TRIGGERS,
    CaseQuery,
    CaseSort,
    Cursor,
    MerchantFigures,
    Period,
    sort_key,
)
from workflow.states import CaseState

Log = Mapping[int, Sequence[TransitionRecord]]


def ever_disputed(log: Log, case_id: int) -> bool:
    return any(r.to_state is CaseState.DISPUTED for r in log.get(case_id, ()))


def matches(
    query: CaseQuery, case: Case, deadline: Timer | None, disputed: bool, now: datetime
) -> bool:
    """Whether the case passes every filter of the query (the SQL stores' WHERE)."""
    states = query.wanted_states()
    due = deadline.due_at if deadline is not None else None
    text = query.text
    return (
        (not states or case.state in states)
        and all(
            wanted is None or wanted == actual
            for wanted, actual in (
                (query.type, case.type),
                (query.merchant_id, case.merchant_id),
                (query.buyer_id, case.buyer_id),
                (query.order_id, case.order_id),
                (query.disputed, disputed),
            )
        )
        and (not query.overdue or (due is not None and due <= now))
        and (query.due_within is None or (due is not None and due <= now + query.due_within))
        and (
            text is None
            or case.id == query.text_id()
            or text in (case.order_id, case.buyer_id)
            or text
            in (case.details.get("return_tracking_no"), case.details.get("outbound_tracking_no"))
        )
    )


#: Stands in for a missing sort key: the rows without one are compared by id alone.
_NO_KEY = datetime.min


def position(query: CaseQuery, case: Case, deadline: Timer | None) -> tuple[int, datetime, int]:
    """(section, key, id): under the deadline sort, the cases without a deadline form a
    second section after those with one, in either direction."""
    key = sort_key(query, case, deadline)
    section = 1 if query.sort is CaseSort.DEADLINE and key is None else 0
    naive = key.astimezone(UTC).replace(tzinfo=None) if key else _NO_KEY
    return section, naive, case.id or 0


def order_key(query: CaseQuery, case: Case, deadline: Timer | None) -> tuple[int, float, int]:
    section, key, case_id = position(query, case, deadline)
    seconds = (key - _NO_KEY) / timedelta(seconds=1)
    return (section, -seconds, -case_id) if query.descending else (section, seconds, case_id)


def comes_after(position: tuple[int, datetime, int], cursor: Cursor) -> bool:
    """Whether a row at ``position`` comes after the cursor's row."""
    key = cursor.key.astimezone(UTC).replace(tzinfo=None) if cursor.key else _NO_KEY
    section = 1 if cursor.sort is CaseSort.DEADLINE and cursor.key is None else 0
    if position[0] != section:
        return position[0] > section
    if cursor.descending:
        return position[1:] < (key, cursor.case_id)
    return position[1:] > (key, cursor.case_id)


def merchant_figures(
    cases: Iterable[Case],
    timers: Iterable[Timer],
    log: Log,
    period: Period,
    merchant_id: str | None = None,
) -> list[MerchantFigures]:
    """Per merchant, of the cases submitted in ``period`` (``CaseRepository.merchant_figures``)."""
    by_merchant: dict[str, list[Case]] = {}
    for case in cases:
        if period.start <= case.created_at < period.end and merchant_id in (
            None,
            case.merchant_id,
        ):
            by_merchant.setdefault(case.merchant_id, []).append(case)
    fired = {
        t.case_id for t in timers if t.status is TimerStatus.FIRED and t.kind in MERCHANT_TIMEOUTS
    }
    figures = []
    for merchant, held in sorted(by_merchant.items()):
        reviews = [s for s in (_review_seconds(log, case) for case in held) if s is not None]
        figures.append(
            MerchantFigures(
                merchant_id=merchant,
                cases=len(held),
                reviewed=len(reviews),
                median_review_seconds=round(statistics.median(reviews), 3) if reviews else None,
                timed_out=sum(1 for case in held if case.id in fired),
                disputed=sum(1 for case in held if ever_disputed(log, case.id or 0)),
            )
        )
    return figures


def _review_seconds(log: Log, case: Case) -> float | None:
    """Seconds from submission to the first end of the merchant's review."""
    ends = [
        r.at
        for r in log.get(case.id or 0, ())
        if r.from_state is CaseState.SUBMITTED and r.trigger in REVIEW_TRIGGERS
    ]
    return (min(ends) - case.created_at).total_seconds() if ends else None
