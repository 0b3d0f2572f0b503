"""Migration 0011: the overdue queue reads its page off ``ix_timers_live_due_at_case_id`` in
order and stops at the page, whatever the number of overdue cases (bench/console_queue.py)."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import sqlalchemy as sa
from alembic import command
from alembic.script import ScriptDirectory
from sqlalchemy.engine import Engine

from config.policy import load_policy
from persistence.case_search import SearchShape
from persistence.migrate import alembic_config
from persistence.tables import cases
from persistence.unit_of_work import SqlUnitOfWorkFactory
from workflow.clock import FakeClock
from workflow.model import Actor, Case, Timer
from workflow.queries import CaseQuery, CaseSort
from workflow.service import CaseService
from workflow.states import CaseState, Role

from .conftest import analyze

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


def _migrate(engine: Engine, target: str, downgrade: bool = False) -> None:
    config = alembic_config()
    with engine.begin() as connection:
        config.attributes["connection"] = connection
        (command.downgrade if downgrade else command.upgrade)(config, target)


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
    _migrate(engine, before, downgrade=True)
    assert present() == {table: {} for table in QUEUE_INDEXES}
    _migrate(engine, "head")
    assert present() == QUEUE_INDEXES


def _overdue_cases(uow_factory: SqlUnitOfWorkFactory, engine: Engine, new_case: NewCase) -> None:
    """``OVERDUE`` cases whose review deadlines passed a second apart, in an order unrelated to
    their ids: one armed through the store, the rest set-based copies of it."""
    with uow_factory() as uow:
        template = uow.cases.add(new_case(order_id="o-template"))
        timer = Timer(template, "merchant_review", "auto_approve", CaseState.SUBMITTED, 1, T0, T0)
        uow.timers.arm(timer)
        uow.commit()
    columns = [column.name for column in cases.columns if column.name != "id"]
    listed = ", ".join(f'"{name}"' for name in columns)
    copied = listed.replace('"order_id"', "'o-' || CAST(n.i AS TEXT)")
    with engine.begin() as connection:
        connection.execute(
            sa.text(
                "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < :count) "
                f"INSERT INTO cases ({listed}) SELECT {copied} FROM cases, n "
                "WHERE cases.id = :template"
            ),
            {"count": OVERDUE - 1, "template": template},
        )
        connection.execute(
            sa.text(
                'INSERT INTO timers (case_id, kind, "trigger", state, version, due_at, status, '
                'created_at) SELECT c.id, t.kind, t."trigger", t.state, t.version, t.due_at, '
                "t.status, t.created_at FROM cases c, timers t "
                "WHERE c.id <> :template AND t.case_id = :template"
            ),
            {"template": template},
        )
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
