"""The SQL of ``CaseRepository.merchant_figures``: per merchant, over the cases submitted in a
period, the cases, how many a merchant timeout acted on, how many were ever disputed, and the
median time to the end of the review.

One grouped SELECT reads the cases of the period through ``ix_cases_created_at_id``; each
case's facts are index lookups by case id (its first review in the log by
``uq_transitions_case_id_seq``, a fired merchant timer by ``ix_timers_case_id``, a dispute by
``ix_transitions_disputed_case_id``). PostgreSQL computes the median (``percentile_cont``);
SQLite has no median, so it returns the review times and Python takes it (the same interpolated
median).
"""

from __future__ import annotations

import statistics
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Dialect

from persistence.checkout import Checkout
from persistence.fastsql import Prepared
from persistence.tables import cases, timers, transitions
from workflow.queries import MERCHANT_TIMEOUTS, REVIEW_TRIGGERS, MerchantFigures, Period


def _literals(values: frozenset[str]) -> list[sa.ColumnElement[Any]]:
    return [sa.literal_column(f"'{value}'") for value in sorted(values)]


def _period_cases(with_merchant: bool) -> sa.Subquery:
    first_review = (
        sa.select(sa.func.min(transitions.c.at))
        .where(
            transitions.c.case_id == cases.c.id,
            transitions.c.from_state == sa.literal_column("'submitted'"),
            transitions.c.trigger.in_(_literals(REVIEW_TRIGGERS)),
        )
        .scalar_subquery()
    )
    timed_out = sa.exists().where(
        timers.c.case_id == cases.c.id,
        timers.c.status == sa.literal_column("'fired'"),
        timers.c.kind.in_(_literals(MERCHANT_TIMEOUTS)),
    )
    disputed = sa.exists().where(
        transitions.c.case_id == cases.c.id,
        transitions.c.to_state == sa.literal_column("'disputed'"),
    )
    statement = sa.select(
        cases.c.merchant_id,
        cases.c.created_at,
        first_review.label("reviewed_at"),
        sa.case((timed_out, 1), else_=0).label("timed_out"),
        sa.case((disputed, 1), else_=0).label("disputed"),
    ).where(
        cases.c.created_at >= sa.bindparam("start", type_=cases.c.created_at.type),
        cases.c.created_at < sa.bindparam("end", type_=cases.c.created_at.type),
    )
    if with_merchant:
        statement = statement.where(cases.c.merchant_id == sa.bindparam("merchant_id"))
    return statement.subquery("period_cases")


def _review_seconds(period: sa.Subquery, dialect: Dialect) -> sa.ColumnElement[Any]:
    if dialect.name == "postgresql":
        return sa.extract("epoch", period.c.reviewed_at - period.c.created_at)
    # SQLite keeps UTC text (persistence.types.UTCDateTime), which julianday() reads.
    days = sa.func.julianday(period.c.reviewed_at) - sa.func.julianday(period.c.created_at)
    return days * 86400.0


def figures_statement(dialect: Dialect, with_merchant: bool) -> sa.Select[Any]:
    period = _period_cases(with_merchant)
    median: sa.ColumnElement[Any] = sa.null()
    if dialect.name == "postgresql":
        median = sa.func.percentile_cont(0.5).within_group(_review_seconds(period, dialect))
    return (
        sa.select(
            period.c.merchant_id,
            sa.func.count(),
            sa.func.count(period.c.reviewed_at),
            sa.func.sum(period.c.timed_out),
            sa.func.sum(period.c.disputed),
            median,
        )
        .group_by(period.c.merchant_id)
        .order_by(period.c.merchant_id)
    )


def review_times_statement(dialect: Dialect, with_merchant: bool) -> sa.Select[Any]:
    """Each reviewed case's review time, by merchant (for a median computed in Python)."""
    period = _period_cases(with_merchant)
    return sa.select(period.c.merchant_id, _review_seconds(period, dialect)).where(
        period.c.reviewed_at.is_not(None)
    )


def merchant_figures(
    checkout: Checkout, dialect: Dialect, period: Period, merchant_id: str | None
) -> list[MerchantFigures]:
    with_merchant = merchant_id is not None
    params = {"start": period.start, "end": period.end, "merchant_id": merchant_id}
    statement = figures_statement(dialect, with_merchant)
    rows = Prepared(statement, dialect, returns=list(statement.selected_columns)).rows(
        checkout, params
    )
    medians: dict[str, float | None] = {row[0]: row[5] for row in rows}
    if dialect.name != "postgresql":
        times: dict[str, list[float]] = {}
        statement = review_times_statement(dialect, with_merchant)
        found = Prepared(statement, dialect, returns=list(statement.selected_columns)).rows(
            checkout, params
        )
        for merchant, seconds in found:
            times.setdefault(merchant, []).append(float(seconds))
        medians = {m: statistics.median(s) if s else None for m, s in times.items()}
    return [
        MerchantFigures(
            merchant_id=row[0],
            cases=int(row[1]),
            reviewed=int(row[2]),
            # Milliseconds: SQLite's julianday() is a float of days, not exact to the µs.
            median_review_seconds=_round_ms(medians.get(row[0])),
            timed_out=int(row[3] or 0),
            disputed=int(row[4] or 0),
        )
        for row in rows
    ]


def _round_ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(float(seconds), 3)
