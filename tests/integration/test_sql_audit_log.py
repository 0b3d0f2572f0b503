"""The transition log is append-only in the database itself, and keeps each record's source
(migration 0008), on SQLite and PostgreSQL."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime

import pytest
import sqlalchemy as sa
from alembic import command
from alembic.script import ScriptDirectory
from sqlalchemy.engine import Engine

from persistence import tables
from persistence.db import make_engine
from persistence.mappers import case_values
from persistence.migrate import alembic_config
from persistence.unit_of_work import SqlUnitOfWorkFactory
from workflow.errors import Conflict
from workflow.model import Case, TransitionRecord
from workflow.states import CaseState

AT = datetime(2026, 11, 20, 2, 0, tzinfo=UTC)


@pytest.fixture
def logged_case(uow_factory: SqlUnitOfWorkFactory, new_case: Callable[..., Case]) -> int:
    """A case with one log record that came through the API with token 7."""
    with uow_factory() as uow:
        case_id = uow.cases.add(new_case())
        record = TransitionRecord(
            case_id, 1, "submit", None, CaseState.SUBMITTED, "buyer:b-1", AT, source="api token #7"
        )
        uow.log.append([record])
        uow.commit()
    return case_id


def test_a_record_keeps_its_source(uow_factory: SqlUnitOfWorkFactory, logged_case: int) -> None:
    with uow_factory() as uow:
        [record] = uow.log.for_case(logged_case)
    assert (record.actor, record.source) == ("buyer:b-1", "api token #7")


@pytest.mark.parametrize(
    "statement",
    [
        "UPDATE transitions SET actor = 'merchant:m-2' WHERE case_id = :case_id",
        "UPDATE transitions SET source = 'cli' WHERE case_id = :case_id",
        "DELETE FROM transitions WHERE case_id = :case_id",
    ],
    ids=["rewrite-actor", "rewrite-source", "delete"],
)
def test_the_database_refuses_to_rewrite_or_delete_the_log(
    engine: Engine, uow_factory: SqlUnitOfWorkFactory, logged_case: int, statement: str
) -> None:
    # given a logged transition
    # when anyone, with any connection, updates or deletes it
    with pytest.raises(sa.exc.DatabaseError) as refused, engine.begin() as connection:
        connection.execute(sa.text(statement), {"case_id": logged_case})

    # then the database itself refused, and the record is as it was
    assert "append-only" in str(refused.value)
    with uow_factory() as uow:
        [record] = uow.log.for_case(logged_case)
    assert (record.actor, record.source) == ("buyer:b-1", "api token #7")


def test_postgres_refuses_to_truncate_the_log(
    engine: Engine, uow_factory: SqlUnitOfWorkFactory, logged_case: int
) -> None:
    if engine.dialect.name != "postgresql":
        pytest.skip("SQLite has no TRUNCATE")
    with pytest.raises(sa.exc.DatabaseError, match="append-only"), engine.begin() as connection:
        connection.execute(sa.text("TRUNCATE transitions CASCADE"))
    with uow_factory() as uow:
        assert len(uow.log.for_case(logged_case)) == 1


def test_appending_still_works(uow_factory: SqlUnitOfWorkFactory, logged_case: int) -> None:
    with uow_factory() as uow:
        record = TransitionRecord(
            logged_case,
            2,
            "approve",
            CaseState.SUBMITTED,
            CaseState.APPROVED,
            "merchant:m-1",
            AT,
            source="event merchant-portal/e-1",
        )
        uow.log.append([record])
        uow.commit()
    with uow_factory() as uow:
        assert [r.source for r in uow.log.for_case(logged_case)] == [
            "api token #7",
            "event merchant-portal/e-1",
        ]


def test_a_key_is_one_calls_on_whichever_case(
    uow_factory: SqlUnitOfWorkFactory, new_case: Callable[..., Case], logged_case: int
) -> None:
    # given a call on one case that carried key k-1
    with uow_factory() as uow:
        record = TransitionRecord(
            logged_case, 2, "approve", None, CaseState.APPROVED, "merchant:m-1", AT, None, {}, "k-1"
        )
        uow.log.append([record])
        uow.commit()
    # when another case's call brings the same key, it is refused and nothing is written
    with uow_factory() as uow:
        other = uow.cases.add(new_case(order_id="o-2"))
        uow.commit()
    with pytest.raises(Conflict, match="k-1 was already used"), uow_factory() as uow:
        reused = TransitionRecord(
            other, 1, "submit", None, CaseState.SUBMITTED, "buyer:b-1", AT, None, {}, "k-1"
        )
        uow.log.append([reused])
        uow.commit()
    with uow_factory() as uow:
        assert uow.log.for_case(other) == []


def test_the_migration_fills_sources_from_keys_and_keeps_one_use_per_key(
    empty_database_url: str, new_case: Callable[..., Case]
) -> None:
    # given a database at the revision before the audit migration, with logged transitions of an
    # event, a timer and a person, and one key a person used on two cases
    script = ScriptDirectory.from_config(alembic_config())
    before = script.get_revision("0008").down_revision
    assert isinstance(before, str)
    engine = make_engine(empty_database_url)
    config = alembic_config()
    with engine.begin() as connection:
        config.attributes["connection"] = connection
        command.upgrade(config, before)
    keys = ["event:sf-express:E1", "timer-4", "k-1"]
    with engine.begin() as connection:
        cases = [
            connection.execute(
                sa.insert(tables.cases)
                .values(case_values(new_case(order_id=order)))
                .returning(tables.cases.c.id)
            ).scalar_one()
            for order in ("o-1", "o-2")
        ]
        for seq, key in enumerate(keys, 1):
            connection.execute(
                sa.insert(tables.transitions).values(
                    case_id=cases[0],
                    seq=seq,
                    trigger="t",
                    to_state="submitted",
                    actor="system",
                    data={},
                    at=AT,
                    idempotency_key=key,
                )
            )
        for case_id in cases:
            connection.execute(
                sa.insert(tables.idempotency_keys).values(case_id=case_id, key="k-1", first_seq=3)
            )

    # when it is upgraded
    with engine.begin() as connection:
        config.attributes["connection"] = connection
        command.upgrade(config, "head")

    # then events and timers have their source, the others none (unknown), and the key's
    # older use stays
    with engine.connect() as connection:
        sources = connection.execute(
            sa.select(tables.transitions.c.source).order_by(tables.transitions.c.seq)
        ).scalars()
        assert list(sources) == ["event sf-express:E1", "timer", None]
        kept = connection.execute(sa.select(tables.idempotency_keys.c.case_id)).scalars()
        assert list(kept) == [cases[0]]
