"""Migration 0006: the relay reads rows never published and rows lost in flight each through a
partial index of its own, instead of walking every row in flight (bench/timers_scale.py)."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from persistence.statements import Statements
from persistence.unit_of_work import SqlUnitOfWorkFactory

from .conftest import analyze, migrate

T0 = datetime(2026, 11, 20, 2, 0, tzinfo=UTC)
#: Rows published a moment ago and not completed yet: far more than one relay batch.
IN_FLIGHT = 2_000
LIMIT = 5


def _seed(engine: Engine) -> dict[str, list[int]]:
    """``IN_FLIGHT`` rows in flight, 3 lost long ago, 4 never published, 2 completed."""
    kinds = ["in_flight"] * IN_FLIGHT + ["lost"] * 3 + ["fresh"] * 4 + ["done"] * 2
    published = {"in_flight": T0, "lost": T0 - timedelta(hours=2), "fresh": None, "done": T0}
    rows = [
        {
            "topic": "case.transitioned",
            "case_id": n,
            "payload": json.dumps({"kind": kind}),
            "created_at": T0 - timedelta(hours=3),
            "published_at": published[kind],
            "completed_at": T0 if kind == "done" else None,
            "attempts": 0 if kind == "fresh" else 1,
        }
        for n, kind in enumerate(kinds)
    ]
    table = sa.table("outbox", *(sa.column(name) for name in rows[0]), sa.column("id"))
    with engine.begin() as connection:
        connection.execute(sa.insert(table), rows)
        found = connection.execute(sa.select(table.c.id, table.c.case_id)).all()
    by_kind: dict[str, list[int]] = {}
    for entry_id, case_id in found:
        by_kind.setdefault(kinds[case_id], []).append(entry_id)
    analyze(engine, "outbox")
    return by_kind


def _plan(engine: Engine, sql: str, params: Any) -> str:
    params = tuple(params) if isinstance(params, list) else params
    with engine.connect() as connection:
        if engine.dialect.name == "postgresql":
            explain = connection.exec_driver_sql(f"EXPLAIN (ANALYZE, FORMAT JSON) {sql}", params)
            return json.dumps(explain.scalar_one())
        explain = connection.exec_driver_sql(f"EXPLAIN QUERY PLAN {sql}", params)
        return " ".join(str(row[-1]) for row in explain)


def test_the_relay_takes_lost_rows_then_fresh_ones_and_not_those_in_flight(
    engine: Engine, uow_factory: SqlUnitOfWorkFactory
) -> None:
    by_kind = _seed(engine)
    with uow_factory() as uow:
        taken = uow.outbox.unpublished(LIMIT, redeliver_before=T0 - timedelta(minutes=1))
    assert [e.id for e in taken] == sorted(by_kind["lost"]) + sorted(by_kind["fresh"])[:2]
    with uow_factory() as uow:
        fresh = uow.outbox.unpublished(LIMIT)
    assert [e.id for e in fresh] == sorted(by_kind["fresh"])


def test_each_relay_read_goes_through_its_partial_index(engine: Engine) -> None:
    _seed(engine)
    statements = Statements(engine.dialect)
    redeliver_before = T0 - timedelta(minutes=1)
    reads = {
        "ix_outbox_unpublished_id": (statements.select_unpublished, {"limit": LIMIT}),
        "ix_outbox_in_flight_published_at": (
            statements.select_undelivered,
            {"limit": LIMIT, "redeliver_before": redeliver_before},
        ),
    }
    for index, (prepared, params) in reads.items():
        bound = prepared._parameters(params)
        plan = _plan(engine, prepared.sql, bound)
        assert index in plan, plan
        if engine.dialect.name == "postgresql":
            # and the index scan read a handful of rows, not the rows in flight
            scans = [node for node in _nodes(json.loads(plan)) if node.get("Index Name") == index]
            assert scans and all(node["Actual Rows"] <= LIMIT for node in scans), plan


def _nodes(plan: Any) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = []
    stack = [plan]
    while stack:
        item = stack.pop()
        if isinstance(item, list):
            stack.extend(item)
        elif isinstance(item, dict):
            found.append(item)
            stack.extend(item.values())
    return found


def test_0006_downgrades_and_upgrades(engine: Engine) -> None:
    for target, downgrade in (("0005", True), ("head", False)):
        migrate(engine, target, downgrade)
        with engine.connect() as connection:
            names = {index["name"] for index in sa.inspect(connection).get_indexes("outbox")}
        assert ("ix_outbox_unpublished_id" in names) is not downgrade
        assert ("ix_outbox_in_flight_published_at" in names) is not downgrade
