"""Migration 0011: the overdue queue reads its page off ``ix_timers_live_due_at_case_id`` in
order and stops at the page, whatever the number of overdue cases (bench/console_queue.py)."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import sqlalchemy as sa
from alembic.script import ScriptDirectory
from sqlalchemy.engine import Engine

from config.policy import load_policy
from persistence.case_search import SearchShape
from persistence.migrate import alembic_config
from persistence.unit_of_work import SqlUnitOfWorkFactory
from workflow.clock import FakeClock
from workflow.model import Actor, Case
from workflow.queries import CaseQuery, CaseSort
from workflow.service import CaseService
from workflow.states import Role

from .conftest import analyze, cases_with_pending_timer, migrate

T0 = datetime(2026, 11, 20, 2, 0, tzinfo=UTC)
#: Overdue cases: far more than a page.
OVERDUE = 2_000
PAGE = 5
QUEUE_INDEXES = {
    "timers": {
        "ix_timers_live_due_at_case_id": ["due_at", "case_id"],
        "ix_timers_case_id": ["case_id"],
    },
    "cases": {
        "ix_cases_created_at_id": ["created_at", "id"],
        "ix_cases_merchant_id_state_id": ["merchant_id", "state", "id"],
    },
    "transitions": {"ix_transitions_disputed_case_id": ["case_id"]},
}

NewCase = Callable[..., Case]


def _indexes(engine: Engine) -> dict[str, dict[str, list[str | None]]]:
    with engine.connect() as connection:
        inspector = sa.inspect(connection)
        return {
            table: {str(i["name"]): list(i["column_names"]) for i in inspector.get_indexes(table)}
            for table in QUEUE_INDEXES
        }


def test_0011_adds_the_queue_indexes_and_downgrades_without_them(engine: Engine) -> None:
    def present() -> dict[str, dict[str, list[str | None]]]:
        found = _indexes(engine)
        return {
            table: {name: found[table][name] for name in wanted if name in found[table]}
            for table, wanted in QUEUE_INDEXES.items()
        }

    assert present() == QUEUE_INDEXES
    before = ScriptDirectory.from_config(alembic_config()).get_revision("0011").down_revision
    assert isinstance(before, str)
    migrate(engine, before, downgrade=True)
    assert present() == {table: {} for table in QUEUE_INDEXES}
    migrate(engine, "head")
    assert present() == QUEUE_INDEXES


def _overdue_cases(uow_factory: SqlUnitOfWorkFactory, engine: Engine, new_case: NewCase) -> None:
    """``OVERDUE`` cases whose review deadlines passed a second apart, in an order unrelated to
    their ids."""
    cases_with_pending_timer(uow_factory, engine, new_case, OVERDUE)
    with engine.begin() as connection:
        # Due times a second apart, shuffled against the ids (7919 is prime to OVERDUE).
        offset = f"((case_id * 7919) % {OVERDUE})"
        if engine.dialect.name == "postgresql":
            moved = f"due_at - {offset} * interval '1 second'"
        else:
            # SQLite keeps UTC text of a fixed width (persistence.types.UTCDateTime).
            moved = f"strftime('%Y-%m-%d %H:%M:%S.000000', due_at, '-' || {offset} || ' seconds')"
        connection.execute(sa.text(f"UPDATE timers SET due_at = {moved}"))
    analyze(engine, "timers")
    analyze(engine, "cases")


def test_the_overdue_queue_reads_one_page_in_index_order(
    backend: str, engine: Engine, uow_factory: SqlUnitOfWorkFactory, new_case: NewCase
) -> None:
    # given many overdue cases
    _overdue_cases(uow_factory, engine, new_case)
    now = T0 + timedelta(hours=1)
    shape = SearchShape(
        frozenset(), 0, False, False, True, None, CaseSort.DEADLINE, False, True, False
    )

    # when the database plans the first page of the overdue queue
    with uow_factory() as uow:
        sql = uow.statements.case_search(shape).sql
        if backend == "postgres":
            params = {"due_before": now, "limit": PAGE + 1}
            explained = uow.connection.exec_driver_sql(f"EXPLAIN ANALYZE {sql}", params)
            plan = [str(row[0]) for row in explained]
            # then it reads the live timers' index in order and stops at the page
            scan = next(line for line in plan if "ix_timers_live_due_at_case_id" in line)
            assert "Index Scan using ix_timers_live_due_at_case_id" in scan, "\n".join(plan)
            assert f"rows={PAGE + 1} " in scan, "\n".join(plan)
            assert not any("Sort Key" in line for line in plan), "\n".join(plan)
        else:
            explained = uow.connection.exec_driver_sql(
                f"EXPLAIN QUERY PLAN {sql}", (now.replace(tzinfo=None).isoformat(" "), PAGE + 1, 0)
            )
            plan = [str(row[-1]) for row in explained]
            assert any("ix_timers_live_due_at_case_id (due_at<?)" in p for p in plan), plan
            assert not any("TEMP B-TREE" in p for p in plan), plan
        uow.rollback()

    # and the service's page is the soonest deadlines, by due time
    service = CaseService(uow_factory, FakeClock(now), load_policy())
    page = service.search(
        CaseQuery(overdue=True, sort=CaseSort.DEADLINE, limit=PAGE), Actor(Role.ADMIN)
    )
    with engine.connect() as connection:
        soonest = connection.execute(
            sa.text("SELECT case_id FROM timers ORDER BY due_at, case_id LIMIT :n"), {"n": PAGE}
        ).scalars()
        assert [row.case.id for row in page.rows] == list(soonest)
