"""The DBAPI fast path gives what Core execution gives, inside the unit of work's transaction."""

from __future__ import annotations

import json
import os
import signal
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone
from typing import Any
from zoneinfo import ZoneInfo

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from persistence import mappers
from persistence.checkout import Checkout
from persistence.db import make_engine
from persistence.fastsql import Prepared, bind_converter, result_converter
from persistence.tables import cases, outbox, timers, transitions
from persistence.types import UTCDateTime, json_text, json_value
from persistence.unit_of_work import SqlUnitOfWorkFactory
from workflow.errors import Conflict
from workflow.model import (
    Case,
    Gift,
    Item,
    OutboxMessage,
    Payment,
    Timer,
    TimerStatus,
    TransitionRecord,
)
from workflow.ports import CaseQuery
from workflow.states import CaseState

NewCase = Callable[..., Case]
T0 = datetime(2026, 11, 20, 2, 0, tzinfo=UTC)


def test_rows_match_core_execution(
    engine: Engine, uow_factory: SqlUnitOfWorkFactory, new_case: NewCase
) -> None:
    tz = timezone(timedelta(hours=8))
    with uow_factory() as uow:
        uow.cases.add(
            new_case(
                skus=("a", "b"),
                gifts=[Gift("g", 1, 300)],
                delivered_at=None,
                payment=Payment("alipay", 1, datetime(2026, 1, 1, 0, 0, 0, 1, tzinfo=tz)),
                details={"说明": "测试", "nested": {"list": [1, 2.5, None, True]}},
            )
        )
        uow.cases.add(new_case(order_id="o-2"))
        uow.commit()

    statement = sa.select(cases).order_by(cases.c.id)
    prepared = Prepared(statement, engine.dialect, returns=list(statement.selected_columns))
    with engine.connect() as connection:
        assert prepared.rows(connection, {}) == [list(row) for row in connection.execute(statement)]


def test_bind_parameters_convert_like_core(engine: Engine, database_url: str) -> None:
    written = datetime(2026, 3, 1, 8, 0, tzinfo=timezone(timedelta(hours=-3)))
    statement = sa.select(sa.cast(sa.bindparam("at", type_=timers.c.due_at.type), sa.String))
    prepared = Prepared(statement, engine.dialect, returns=list(statement.selected_columns))
    with engine.connect() as connection:
        core = connection.execute(statement, {"at": written}).scalar_one()
        assert prepared.rows(connection, {"at": written}) == [[core]]


def test_sqlite_stores_fixed_width_utc_text(
    backend: str, engine: Engine, uow_factory: SqlUnitOfWorkFactory, new_case: NewCase
) -> None:
    if backend != "sqlite":
        pytest.skip("the text form is SQLite's")
    with uow_factory() as uow:
        uow.cases.add(new_case(created_at=datetime(2026, 11, 20, 8, 0, tzinfo=UTC)))
        uow.commit()
    with engine.connect() as connection:
        text = connection.exec_driver_sql("SELECT created_at, typeof(created_at) FROM cases").one()
    # Microseconds are written even when zero: the width is fixed, so text order is time order.
    assert tuple(text) == ("2026-11-20 08:00:00.000000", "text")


def test_in_lists_are_refused(engine: Engine) -> None:
    statement = sa.select(cases.c.id).where(cases.c.state.in_(["a", "b"]))
    with pytest.raises(TypeError, match="rendered at execution time"):
        Prepared(statement, engine.dialect, returns=[cases.c.id])


def test_errors_are_sqlalchemy_errors(engine: Engine, database_url: str) -> None:
    insert = Prepared(sa.insert(timers), engine.dialect, column_keys=["case_id", "kind", "trigger"])
    with engine.connect() as connection, pytest.raises(sa.exc.IntegrityError):
        insert.execute(connection, {"case_id": 1, "kind": "k", "trigger": "t"})


def test_work_after_commit_is_a_new_transaction(
    uow_factory: SqlUnitOfWorkFactory, new_case: NewCase
) -> None:
    with uow_factory() as uow:
        first = uow.cases.add(new_case())
        uow.commit()
        uow.cases.add(new_case(order_id="o-2"))
        # Not committed: leaving the block drops it, and only it.
    with uow_factory() as uow:
        assert [c.id for c in uow.cases.list(CaseQuery())] == [first]


def test_rollback_then_continue(uow_factory: SqlUnitOfWorkFactory, new_case: NewCase) -> None:
    with uow_factory() as uow:
        uow.cases.add(new_case())
        uow.rollback()
        uow.cases.add(new_case(order_id="o-2"))
        uow.commit()
    with uow_factory() as uow:
        assert [c.order_id for c in uow.cases.list(CaseQuery())] == ["o-2"]


def test_save_refuses_to_drop_a_change_to_the_application(
    uow_factory: SqlUnitOfWorkFactory, new_case: NewCase
) -> None:
    with uow_factory() as uow:
        case_id = uow.cases.add(new_case())
        uow.commit()
    with uow_factory() as uow:
        case = uow.cases.get(case_id)
        assert case is not None
        case.items = [*case.items, Item("sku-9", 1, 100)]
        case.version += 1
        with pytest.raises(ValueError, match="items cannot change"):
            uow.cases.save(case, 1)
        uow.commit()
    with uow_factory() as uow:
        stored = uow.cases.get(case_id)
        assert stored is not None and (stored.version, len(stored.items)) == (1, 1)


def test_a_failed_begin_leaves_no_autocommit_behind(
    backend: str, uow_factory: SqlUnitOfWorkFactory, new_case: NewCase
) -> None:
    """A writer that timed out waiting for the lock, then goes on, is still transactional."""
    if backend != "sqlite":
        pytest.skip("BEGIN IMMEDIATE is SQLite's")
    with uow_factory() as waiter:
        raw = waiter.connection.connection.driver_connection
        assert raw is not None
        raw.execute("PRAGMA busy_timeout=50")
        with uow_factory() as holder:
            holder.cases.get(1)  # takes the write lock
            with pytest.raises(Conflict, match="locked"):
                waiter.cases.get(1)
        waiter.cases.add(new_case())
        assert raw.in_transaction
    with uow_factory() as uow:
        assert uow.cases.of_orders(["o-1"]) == {}


# -- the values fastsql writes and reads are SQLAlchemy's, byte for byte ------------------------

INSTANTS = [
    T0,
    datetime(2026, 11, 20, 10, 0, 0, 123456, tzinfo=timezone(timedelta(hours=8))),
    datetime(2026, 3, 1, 8, 0, tzinfo=timezone(timedelta(hours=-3, minutes=-30))),
    datetime(999, 1, 2, 3, 4, 5, 6, tzinfo=UTC),
    datetime(2026, 11, 20, 2, 0, tzinfo=ZoneInfo("Asia/Shanghai")),
]


def test_direct_timestamp_converters_give_what_sqlalchemy_gives(engine: Engine) -> None:
    dialect = engine.dialect
    column = UTCDateTime()
    # What SQLAlchemy runs for a bound value: the decorator, then the dialect's DATETIME.
    core = column.dialect_impl(dialect)
    ours, theirs = bind_converter(column, dialect), core.bind_processor(dialect)
    assert ours is not None and theirs is not None
    for instant in [None, *INSTANTS]:
        # Twice: the second call of the same object is answered from the last-value memo.
        assert ours(instant) == ours(instant) == theirs(instant)
        assert type(ours(instant)) is type(theirs(instant))
    for bad, error in ((datetime(2026, 1, 1), ValueError), ("2026-01-01", TypeError)):
        with pytest.raises(error):
            ours(bad)
        with pytest.raises(error):
            theirs(bad)

    read, core_read = result_converter(column, dialect), core.result_processor(dialect, None)
    assert read is not None and core_read is not None
    stored: list[Any] = [theirs(instant) for instant in INSTANTS]
    if engine.dialect.name == "sqlite":
        # Text SQLAlchemy never writes, but may find in a file edited by hand.
        stored += ["2026-11-20 03:00:00", "2026-11-20T03:00:00.5+08:00", "2026-11-20"]
    for value in [None, *stored]:
        got, want = read(value), core_read(value)
        assert got == want
        if want is not None:
            assert (
                (got.tzinfo, got.isoformat())
                == (want.tzinfo, want.isoformat())
                == (UTC, got.isoformat())
            )


def _stored(connection: sa.Connection, table: sa.Table, row_id: int) -> dict[str, Any]:
    """Every column but the id as the database holds it: text form, and SQLite's storage class."""
    columns = [column for column in table.columns if column.key != "id"]
    typeof = connection.dialect.name == "sqlite"
    selected: list[sa.ColumnElement[Any]] = []
    for column in columns:
        selected.append(sa.cast(column, sa.Text))
        if typeof:
            selected.append(sa.func.typeof(column))
    row = connection.execute(sa.select(*selected).where(table.c.id == row_id)).one()
    return {
        column.key: tuple(row)[i * (1 + typeof) : (i + 1) * (1 + typeof)]
        for i, column in enumerate(columns)
    }


def test_rows_written_match_what_core_writes(
    engine: Engine, uow_factory: SqlUnitOfWorkFactory, new_case: NewCase
) -> None:
    """Each statement of a transition, written once through SQLAlchemy Core (what the code
    before fastsql's own converters wrote) and once through the unit of work, stores the same."""
    tz = timezone(timedelta(hours=8))
    case = new_case(
        gifts=[Gift("g", 1, 300)],
        payment=Payment("alipay", 1, datetime(2026, 1, 1, 0, 0, 0, 1, tzinfo=tz)),
        details={"说明": "测试", "nested": {"list": [1, 2.5, None, True]}, "refund_base": 1},
    )
    with uow_factory() as uow:
        ours_id = uow.cases.add(case)
        core_id = uow.connection.execute(
            sa.insert(cases).values(**{**mappers.case_values(case), "order_id": "o-core"})
        ).inserted_primary_key[0]
        uow.commit()
    with uow_factory() as uow:
        loaded = uow.cases.get(ours_id)
        assert loaded is not None
        loaded.state, loaded.version = CaseState.APPROVED, 2
        loaded.updated_at = datetime(2026, 11, 21, 9, 30, 0, 5, tzinfo=tz)
        loaded.details["return_tracking_no"] = "SF1"
        uow.cases.save(loaded, 1)  # a miss would be a Conflict at the next statement
        uow.connection.execute(
            sa.update(cases)
            .where(cases.c.id == core_id)
            .values(**mappers.case_mutable_values(loaded))
        )
        record = TransitionRecord(
            ours_id, 2, "approve", CaseState.SUBMITTED, CaseState.APPROVED, "merchant:m-1",
            loaded.updated_at, "why", {"说明": "测试", "n": 1.5},
        )  # fmt: skip
        uow.log.append([record])
        core_record = uow.connection.execute(
            sa.insert(transitions).values(**{**mappers.record_values(record), "seq": 3})
        ).inserted_primary_key[0]
        timer = Timer(ours_id, "return_shipment", "expire_return", CaseState.APPROVED, 2,
                      loaded.updated_at + timedelta(days=7), loaded.updated_at)  # fmt: skip
        uow.timers.arm(timer)
        core_timer = uow.connection.execute(
            sa.insert(timers).values(
                **{**mappers.timer_values(timer), "status": TimerStatus.CANCELLED.value}
            )
        ).inserted_primary_key[0]
        message = OutboxMessage(
            "case.transitioned", ours_id, {"说明": [1, None]}, loaded.updated_at
        )
        uow.outbox.add([message, message])
        uow.connection.execute(
            sa.insert(outbox).values(
                topic=message.topic,
                case_id=ours_id,
                payload=message.payload,
                created_at=message.created_at,
                attempts=0,
            )
        )
        uow.commit()
    with engine.connect() as connection:
        ours_case, core_case = (_stored(connection, cases, i) for i in (ours_id, core_id))
        assert ours_case.pop("order_id") != core_case.pop("order_id")
        assert ours_case == core_case
        log = connection.execute(sa.select(transitions.c.id).order_by(transitions.c.seq)).all()
        ours_log, core_log = (_stored(connection, transitions, row.id) for row in log[-2:])
        assert ours_log.pop("seq") != core_log.pop("seq")
        assert ours_log == core_log
        assert timer.id is not None
        ours_timer, core_timer_row = (
            _stored(connection, timers, i) for i in (timer.id, core_timer)
        )
        assert ours_timer.pop("status") != core_timer_row.pop("status")
        assert ours_timer == core_timer_row
        rows = connection.execute(sa.select(outbox.c.id).order_by(outbox.c.id)).all()
        assert len({str(_stored(connection, outbox, row.id)) for row in rows[-3:]}) == 1
    assert core_record is not None


def test_json_text_and_values_are_what_json_dumps_and_loads_give() -> None:
    """The SQLite engine's serializer writes the text ``json.dumps(value, ensure_ascii=False)``
    wrote, and its deserializer reads what ``json.loads`` reads, errors included."""
    samples: list[Any] = [
        {},
        [],
        {"说明": "测试", "nested": {"list": [1, 2.5, None, True, -0.0, 1e100]}, "": "\u2028"},
        [{"sku": "a", "quantity": 1, "unit_price": 12_900}],
        'quote " and \\ and \n',
        float("inf"),
        None,
    ]
    for value in samples:
        text = json_text(value)
        assert text == json.dumps(value, ensure_ascii=False)
        assert str(json_value(text)) == str(json.loads(text))
    for text in (" {} ", '{"a": 1}\n'):
        assert json_value(text) == json.loads(text)
    for bad in ("{} x", "\ufeff{}", "", "{"):
        with pytest.raises(json.JSONDecodeError) as ours:
            json_value(bad)
        with pytest.raises(json.JSONDecodeError) as theirs:
            json.loads(bad)
        assert str(ours.value) == str(theirs.value)
    circular: dict[str, Any] = {}
    circular["self"] = circular
    with pytest.raises(ValueError, match="Circular reference"):
        json_text(circular)


def test_a_forked_child_opens_its_own_connections(
    backend: str, database_url: str, uow_factory: SqlUnitOfWorkFactory
) -> None:
    """Celery's prefork children are forked from a process whose pool holds connections."""
    if backend != "postgres":
        pytest.skip("a PostgreSQL session's backend pid tells whose connection it is")
    engine = make_engine(database_url)
    # given a parent whose pool holds a connection (as the worker's schema check leaves)
    with engine.connect() as connection:
        parent_pid = connection.exec_driver_sql("SELECT pg_backend_pid()").scalar_one()
    read_end, write_end = os.pipe()
    child = os.fork()
    if child == 0:  # pragma: no cover - the child reports through the pipe and exits
        code = 1
        try:
            # when the child runs a unit of work, as a pool child runs a task
            with uow_factory() as uow:
                pid = uow.connection.exec_driver_sql("SELECT pg_backend_pid()").scalar_one()
            os.write(write_end, str(pid).encode())
            code = 0
        finally:
            os._exit(code)
    os.close(write_end)
    _, status = os.waitpid(child, 0)
    reported = os.read(read_end, 64).decode()
    os.close(read_end)
    # then it ran on a session of its own, and the parent's connection still works
    assert os.waitstatus_to_exitcode(status) == 0
    assert reported and int(reported) != parent_pid
    with engine.connect() as connection:
        assert connection.exec_driver_sql("SELECT pg_backend_pid()").scalar_one() == parent_pid


# -- deferred writes (PostgreSQL: sent in one pipeline with the next statement or the COMMIT) ----

_MARKS = sa.table("deferred_marks", sa.column("id"), sa.column("note"))


@pytest.fixture
def marks(engine: Engine) -> Iterator[Prepared]:
    """A table of its own, and an INSERT into it as the stores prepare theirs."""
    with engine.begin() as connection:
        connection.exec_driver_sql(
            "CREATE TABLE IF NOT EXISTS deferred_marks (id INTEGER PRIMARY KEY, note TEXT)"
        )
        connection.exec_driver_sql("DELETE FROM deferred_marks")
    yield Prepared(
        sa.insert(_MARKS).values(id=sa.bindparam("id"), note=sa.bindparam("note")),
        engine.dialect,
    )
    with engine.begin() as connection:
        connection.exec_driver_sql("DROP TABLE deferred_marks")


@pytest.fixture
def count_marks(engine: Engine) -> Prepared:
    """How many marks there are, as the transaction in hand sees it."""
    return Prepared(sa.select(sa.func.count()).select_from(_MARKS), engine.dialect)


def _notes(engine: Engine) -> list[str]:
    with engine.connect() as connection:
        rows = connection.exec_driver_sql("SELECT note FROM deferred_marks ORDER BY id")
        return list(rows.scalars())


def _checkout(uow: Any) -> Checkout:
    checkout: Checkout = uow.active()
    return checkout


def test_a_deferred_write_is_seen_by_the_next_statement_and_committed(
    engine: Engine, uow_factory: SqlUnitOfWorkFactory, marks: Prepared, count_marks: Prepared
) -> None:
    with uow_factory() as uow:
        checkout = _checkout(uow)
        assert count_marks.rows(checkout, {}) == [[0]]  # the transaction's first statement runs now
        marks.defer_many(checkout, [{"id": 1, "note": "a"}, {"id": 2, "note": "b"}])
        marks.defer_many(checkout, [{"id": 3, "note": "c"}])
        assert count_marks.rows(checkout, {}) == [[3]]
        marks.defer_many(checkout, [{"id": 4, "note": "d"}])
        uow.commit()  # the last one goes with the COMMIT
    assert _notes(engine) == ["a", "b", "c", "d"]


def test_a_failed_deferred_write_surfaces_at_the_commit_and_commits_nothing(
    backend: str, engine: Engine, uow_factory: SqlUnitOfWorkFactory, marks: Prepared
) -> None:
    if backend == "sqlite":
        pytest.skip("SQLite runs a deferred write at once (the next test shows it)")
    with uow_factory() as uow:
        checkout = _checkout(uow)
        marks.execute(checkout, {"id": 1, "note": "first"})
        marks.defer_many(checkout, [{"id": 2, "note": "kept?"}])
        marks.defer_many(checkout, [{"id": 1, "note": "duplicate"}])
        # the unit of work says what the write said, a concurrent writer won (on either backend)
        with pytest.raises(Conflict):
            uow.commit()
    assert _notes(engine) == []


def test_a_failed_deferred_write_surfaces_at_the_next_statement(
    backend: str,
    engine: Engine,
    uow_factory: SqlUnitOfWorkFactory,
    marks: Prepared,
    count_marks: Prepared,
) -> None:
    with uow_factory() as uow:
        checkout = _checkout(uow)
        marks.execute(checkout, {"id": 1, "note": "first"})
        if backend == "sqlite":
            # SQLite runs it at once: the error comes from the write itself
            with pytest.raises(sa.exc.IntegrityError) as raised:
                marks.defer_many(checkout, [{"id": 1, "note": "duplicate"}])
            assert not getattr(raised.value, "deferred_write", False)
            return
        marks.defer_many(checkout, [{"id": 1, "note": "duplicate"}])
        with pytest.raises(sa.exc.IntegrityError) as raised:
            count_marks.rows(checkout, {})
        assert raised.value.deferred_write  # type: ignore[attr-defined]
        assert "deferred_marks" in str(raised.value.statement)
    assert _notes(engine) == []


def test_a_savepoint_whose_writes_were_not_sent_is_rolled_back_by_forgetting_them(
    engine: Engine, uow_factory: SqlUnitOfWorkFactory, marks: Prepared, count_marks: Prepared
) -> None:
    with uow_factory() as uow:
        checkout = _checkout(uow)
        marks.execute(checkout, {"id": 1, "note": "before"})
        with pytest.raises(LookupError), checkout.savepoint(release=False):
            marks.defer_many(checkout, [{"id": 2, "note": "undone"}])
            raise LookupError("the item is refused")
        with checkout.savepoint(release=False):
            marks.defer_many(checkout, [{"id": 3, "note": "kept"}])
        with pytest.raises(LookupError), checkout.savepoint(release=False):
            marks.defer_many(checkout, [{"id": 4, "note": "sent, then undone"}])
            assert count_marks.rows(checkout, {}) == [[3]]  # the SAVEPOINT and the write went out
            raise LookupError("refused after a read")
        uow.commit()
    assert _notes(engine) == ["before", "kept"]


def test_a_deferred_log_row_that_loses_a_race_is_a_conflict(
    uow_factory: SqlUnitOfWorkFactory, new_case: NewCase
) -> None:
    with uow_factory() as uow:
        case_id = uow.cases.add(new_case())
        uow.commit()
    record = TransitionRecord(
        case_id, 1, "approve", CaseState.SUBMITTED, CaseState.APPROVED, "merchant:m1", T0
    )
    with uow_factory() as uow:
        uow.log.append([record])
        uow.commit()
    # when a second writer appends the same entry, then reads before committing
    with uow_factory() as uow, pytest.raises(Conflict):
        uow.cases.get(case_id)
        uow.log.append([record])
        uow.cases.get(case_id)


# -- checked deferred writes (a compare-and-set whose miss surfaces later and fails the commit) --


class _Missed(Exception):
    pass


_MISS = {"mark_id": 1, "was": "not the note", "note": "never"}


@dataclass
class _Marks:
    """The marks table's statements, and a unit of work that wrote the first mark."""

    backend: str
    engine: Engine
    uow_factory: SqlUnitOfWorkFactory
    insert: Prepared
    #: A compare-and-set on a mark: its note, only if it is still the expected one.
    renote: Prepared
    count: Prepared

    @contextmanager
    def first(self, note: str = "first", mark_id: int = 1) -> Iterator[tuple[Any, Checkout]]:
        with self.uow_factory() as uow:
            checkout = _checkout(uow)
            self.insert.execute(checkout, {"id": mark_id, "note": note})
            yield uow, checkout

    def notes(self) -> list[str]:
        return _notes(self.engine)

    def only_postgresql(self) -> None:
        if self.backend == "sqlite":
            pytest.skip("SQLite runs a checked write at once (the previous test shows it)")


@pytest.fixture
def checked(
    backend: str,
    engine: Engine,
    uow_factory: SqlUnitOfWorkFactory,
    marks: Prepared,
    count_marks: Prepared,
) -> _Marks:
    renote = Prepared(
        sa.update(_MARKS)
        .where(_MARKS.c.id == sa.bindparam("mark_id"), _MARKS.c.note == sa.bindparam("was"))
        .values(note=sa.bindparam("note")),
        engine.dialect,
    )
    return _Marks(backend, engine, uow_factory, marks, renote, count_marks)


def test_a_checked_write_that_hits_commits_and_one_that_misses_raises(checked: _Marks) -> None:
    with checked.first() as (uow, checkout):
        hit = {"mark_id": 1, "was": "first", "note": "second"}
        checked.renote.defer_checked(checkout, hit, 1, _Missed)
        if checked.backend == "sqlite":
            # SQLite runs it at once: the miss is raised by the call, having written nothing
            with pytest.raises(_Missed):
                checked.renote.defer_checked(checkout, _MISS, 1, _Missed)
        uow.commit()
    assert checked.notes() == ["second"]


def test_a_checked_write_that_misses_fails_the_next_statement_and_the_commit(
    checked: _Marks,
) -> None:
    checked.only_postgresql()
    with checked.first() as (_, checkout):
        checked.renote.defer_checked(checkout, _MISS, 1, _Missed)
        checked.insert.defer_many(checkout, [{"id": 2, "note": "written after the miss"}])
        # the next statement that needs an answer raises the miss
        with pytest.raises(_Missed):
            checked.count.rows(checkout, {})
        # and the commit raises it again, committing nothing
        with pytest.raises(_Missed):
            checkout.commit()
    assert checked.notes() == []


def test_a_checked_write_still_queued_at_the_commit_is_checked_before_any_commit(
    checked: _Marks,
) -> None:
    checked.only_postgresql()
    with checked.first() as (_, checkout):
        checked.insert.defer_many(checkout, [{"id": 2, "note": "second"}])
        checked.renote.defer_checked(checkout, _MISS, 1, _Missed)
        with pytest.raises(_Missed):
            checkout.commit()
    assert checked.notes() == []


def test_only_a_rollback_to_a_savepoint_taken_before_the_miss_clears_the_failure(
    checked: _Marks,
) -> None:
    checked.only_postgresql()
    insert, renote, count = checked.insert, checked.renote, checked.count
    with checked.first() as (uow, checkout):
        # a miss inside a savepoint, found inside it: rolling that savepoint back undoes it
        with pytest.raises(_Missed), checkout.savepoint(release=False):
            insert.defer_many(checkout, [{"id": 2, "note": "undone"}])
            renote.defer_checked(checkout, _MISS, 1, _Missed)
            count.rows(checkout, {})
        insert.defer_many(checkout, [{"id": 3, "note": "kept"}])
        uow.commit()
    assert checked.notes() == ["first", "kept"]
    with checked.first("second transaction", mark_id=4) as (_, checkout):
        # a miss in one savepoint, found in the next: rolling back the later one leaves the
        # miss's own writes in the transaction, so it stays failed
        with checkout.savepoint(release=False):
            insert.defer_many(checkout, [{"id": 5, "note": "with the miss"}])
            renote.defer_checked(checkout, _MISS, 1, _Missed)
        with pytest.raises(_Missed), checkout.savepoint(release=False):
            count.rows(checkout, {})
        with pytest.raises(_Missed):
            checkout.commit()
    assert checked.notes() == ["first", "kept"]


# -- the transaction's BEGIN, sent with its first statement (PostgreSQL) ---------------------------


def test_the_begin_goes_out_with_the_first_statement_and_opens_the_transaction(
    backend: str,
    engine: Engine,
    uow_factory: SqlUnitOfWorkFactory,
    marks: Prepared,
    monkeypatch: pytest.MonkeyPatch,
    count_marks: Prepared,
) -> None:
    if backend == "sqlite":
        pytest.skip("SQLite has no round trips; BEGIN IMMEDIATE is tested above")
    import psycopg

    pipelines: list[int] = []
    real_pipeline = psycopg.Connection.pipeline

    def counted(self: Any) -> Any:
        pipelines.append(1)
        return real_pipeline(self)

    monkeypatch.setattr(psycopg.Connection, "pipeline", counted)
    notices: list[str] = []
    with uow_factory() as uow:
        checkout = _checkout(uow)
        dbapi: Any = checkout._live_pooled().dbapi_connection
        dbapi.add_notice_handler(lambda notice: notices.append(notice.message_primary))
        marks.execute(checkout, {"id": 1, "note": "first statement"})
        # one pipeline, our BEGIN and the statement: the driver's own BEGIN would be a round
        # trip of its own, and two BEGINs a server warning
        assert pipelines == [1]
        assert dbapi.info.transaction_status == psycopg.pq.TransactionStatus.INTRANS
        assert not dbapi.autocommit
        assert count_marks.rows(checkout, {}) == [[1]]
        uow.rollback()  # the first statement's write was inside the transaction
    assert _notes(engine) == []
    with uow_factory() as uow:
        marks.execute(_checkout(uow), {"id": 2, "note": "committed"})
        uow.commit()
    assert _notes(engine) == ["committed"]
    assert notices == []


class _Interrupted(Exception):
    """What a Celery task's soft time limit raises: an exception out of a signal handler."""


def test_a_connection_cut_off_mid_pipeline_is_closed_not_pooled(
    backend: str, uow_factory: SqlUnitOfWorkFactory
) -> None:
    if backend == "sqlite":
        pytest.skip("sqlite3 has no pipeline to leave half-way")

    def interrupt(signum: int, frame: Any) -> None:
        raise _Interrupted()

    # given a unit of work whose statement (with a deferred write, in one pipeline) is cut off
    # while psycopg waits for the server, as a soft time limit does
    previous = signal.signal(signal.SIGALRM, interrupt)
    try:
        # (psycopg then fails to leave the pipeline, and raises that instead)
        with pytest.raises((_Interrupted, sa.exc.OperationalError)), uow_factory() as uow:
            checkout = _checkout(uow)
            first_backend = checkout.run("SELECT pg_backend_pid()", ()).fetchone()[0]
            checkout.defer("SELECT 1", ())
            signal.setitimer(signal.ITIMER_REAL, 0.2)
            checkout.run("SELECT pg_sleep(5)", ())
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)

    # then the next unit of work runs (on another connection: that one was closed; the
    # rollback and the pool's reset fail on it, and the pool then discards it)
    with uow_factory() as uow:
        checkout = _checkout(uow)
        assert checkout.run("SELECT pg_backend_pid()", ()).fetchone()[0] != first_backend
        uow.commit()
