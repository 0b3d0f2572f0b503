"""Migration 0005: the sweep's claim reads ``ix_timers_status_due_at_id`` in order and stops after
the batch, even when thousands of timers share one due instant (bench/timers_scale.py)."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from persistence.unit_of_work import SqlUnitOfWorkFactory
from workflow.model import Case, Timer, TimerStatus
from workflow.states import CaseState

from .conftest import analyze, cases_with_pending_timer, migrate

T0 = datetime(2026, 11, 20, 2, 0, tzinfo=UTC)
#: Timers due at the same instant: far more than one batch.
TIED = 2_000
BATCH = 5

NewCase = Callable[..., Case]


def _timer_indexes(engine: Engine) -> dict[str, list[str | None]]:
    with engine.connect() as connection:
        return {
            str(index["name"]): list(index["column_names"])
            for index in sa.inspect(connection).get_indexes("timers")
        }


def _tied_timers(uow_factory: SqlUnitOfWorkFactory, engine: Engine, new_case: NewCase) -> None:
    """``TIED`` cases, each with a pending timer due at ``T0``."""
    cases_with_pending_timer(uow_factory, engine, new_case, TIED)
    analyze(engine, "timers")


def test_the_claim_index_holds_due_at_and_id(engine: Engine) -> None:
    indexes = _timer_indexes(engine)
    assert indexes["ix_timers_status_due_at_id"] == ["status", "due_at", "id"]
    assert "ix_timers_status_due_at" not in indexes


def test_0005_downgrades_to_the_old_index_and_back(
    engine: Engine, uow_factory: SqlUnitOfWorkFactory, new_case: NewCase
) -> None:
    with uow_factory() as uow:
        case_id = uow.cases.add(new_case())
        uow.timers.arm(
            Timer(case_id, "merchant_review", "auto_approve", CaseState.SUBMITTED, 1, T0, T0)
        )
        uow.commit()
    migrate(engine, "0004", downgrade=True)
    indexes = _timer_indexes(engine)
    assert indexes["ix_timers_status_due_at"] == ["status", "due_at"]
    assert "ix_timers_status_due_at_id" not in indexes
    migrate(engine, "head")
    assert _timer_indexes(engine)["ix_timers_status_due_at_id"] == ["status", "due_at", "id"]
    with uow_factory() as uow:
        claimed = uow.timers.claim_due(T0, 10, "sweeper", T0 - timedelta(minutes=5))
    assert [(t.case_id, t.status) for t in claimed] == [(case_id, TimerStatus.CLAIMED)]


def test_a_claim_reads_one_batch_of_tied_timers_in_index_order(
    backend: str, engine: Engine, uow_factory: SqlUnitOfWorkFactory, new_case: NewCase
) -> None:
    _tied_timers(uow_factory, engine, new_case)
    as_of = T0 + timedelta(seconds=1)
    with uow_factory() as uow:
        sql = uow.statements.claim_due.sql
        if backend == "postgres":
            params = {
                "as_of": as_of,
                "reclaim_before": as_of - timedelta(minutes=5),
                "limit": BATCH,
                "claim_at": as_of,
                "claimer": "explain",
            }
            plan = [
                str(row[0])
                for row in uow.connection.exec_driver_sql(f"EXPLAIN ANALYZE {sql}", params)
            ]
            due_scan = next(line for line in plan if "'pending'" in line)
            scan = plan[plan.index(due_scan) - 1]
            assert "Index Scan using ix_timers_status_due_at_id" in scan, "\n".join(plan)
            # The range scan stops after the batch instead of reading every tied timer.
            assert f"rows={BATCH} " in scan, "\n".join(plan)
            assert not any("Sort Key: timers" in line for line in plan), "\n".join(plan)
        else:
            plan = [
                str(row[-1])
                for row in uow.connection.exec_driver_sql(
                    f"EXPLAIN QUERY PLAN {sql}",
                    # claim_at, claimer, as_of, limit, offset, reclaim_before, then the limits
                    (as_of, "explain", as_of, BATCH, 0, as_of, BATCH, 0, BATCH, 0),
                )
            ]
            assert any("ix_timers_status_due_at_id (status=? AND due_at<?)" in p for p in plan), (
                plan
            )
        uow.rollback()
    with uow_factory() as uow:
        claimed = uow.timers.claim_due(as_of, BATCH, "sweeper", as_of - timedelta(minutes=5))
        uow.commit()
    # Ties on due_at go by id: the first BATCH timers armed.
    with engine.connect() as connection:
        first_ids = (
            connection.execute(
                sa.text("SELECT id FROM timers ORDER BY due_at, id LIMIT :n"), {"n": BATCH}
            )
            .scalars()
            .all()
        )
    assert [t.id for t in claimed] == list(first_ids)
