"""The cases: ``workflow.ports.CaseRepository``."""

from __future__ import annotations

import builtins
from collections.abc import Sequence
from dataclasses import replace
from datetime import datetime
from typing import Any, NoReturn

from sqlalchemy.exc import IntegrityError

from persistence.case_search import SearchShape
from persistence.mappers import (
    FIXED_FIELDS,
    case_from_row,
    case_mutable_values,
    case_values,
    fixed_fields,
    id_of,
    timer_from_row,
)
from persistence.merchant_figures import merchant_figures
from persistence.statements import CASE_WIDTH
from persistence.stores.base import SqlStore, Transaction
from persistence.stores.timers import SqlTimerStore
from workflow.errors import Conflict, case_moved
from workflow.model import Case, Timer
from workflow.queries import (
    CaseQuery,
    CaseSort,
    MerchantFigures,
    Period,
    QueueRow,
    waiting_for,
)


class SqlCaseRepository(SqlStore):
    def __init__(self, uow: Transaction, timers: SqlTimerStore) -> None:
        super().__init__(uow)
        self._timers = timers
        # The fixed columns of each case as loaded, so save() can refuse to drop a change to them.
        self._loaded: dict[int, tuple[Any, ...]] = {}
        # Cases saved since they were last read: the caller's copies of them are not current.
        self._saved: set[int] = set()
        # Cases read with an inbound event's record (``SqlEventStore.record``), for ``get``.
        self._read_with_record: dict[int, Case | None] = {}

    def forget_loaded(self) -> None:
        self._loaded.clear()
        self._saved.clear()
        self._read_with_record.clear()

    def forget_read(self) -> None:
        self._read_with_record.clear()

    def holds_current(self, case_id: int) -> bool:
        """Whether this transaction read the case and has not saved it since."""
        return case_id in self._loaded and case_id not in self._saved

    def read_with_record(self, case_id: int, case: Case | None) -> None:
        self._read_with_record[case_id] = case

    def _load(self, row: Sequence[Any]) -> Case:
        case = case_from_row(row)
        assert case.id is not None
        self._loaded[case.id] = fixed_fields(case)
        self._saved.discard(case.id)
        return case

    def get(self, case_id: int) -> Case | None:
        if case_id in self._read_with_record:
            # Read with the event's record just before, in this transaction.
            return self._read_with_record.pop(case_id)
        row = self._run(self._uow.statements.select_case_and_timer.first, {"case_id": case_id})
        return self.with_timer(row) if row is not None else None

    def get_many(self, case_ids: Sequence[int]) -> dict[int, Case]:
        """One SELECT ... WHERE id IN (...), prepared per number of ids (a batch has ≤ 100),
        with each case's live timer, as ``get``."""
        return {id_of(case): case for case in self._with_timers_where("id", case_ids)}

    def of_orders(self, order_ids: Sequence[str]) -> dict[str, builtins.list[Case]]:
        found: dict[str, builtins.list[Case]] = {}
        for case in self._with_timers_where("order_id", order_ids):
            found.setdefault(case.order_id, []).append(case)
        return found

    def _with_timers_where(self, key: str, values: Sequence[Any]) -> builtins.list[Case]:
        """The cases whose ``key`` is one of ``values``, their live timers to the timer store."""
        distinct = list(dict.fromkeys(values))
        if not distinct:
            return []
        statement = self._uow.statements.cases_with_timers(key, len(distinct))
        params = {f"{key}_{i}": value for i, value in enumerate(distinct)}
        return [self.with_timer(row) for row in self._run(statement.rows, params)]

    def with_timer(self, row: Sequence[Any]) -> Case:
        """The case of a ``select_case_and_timer`` row; its timer goes to the timer store."""
        case = self._load(row[:CASE_WIDTH])
        timer = row[CASE_WIDTH:]
        self._timers.read_with_case(id_of(case), timer_from_row(timer) if timer[0] else None)
        return case

    def add(self, case: Case) -> int:
        sql = self._uow.statements
        values = case_values(case)
        # A savepoint keeps the transaction usable after a unique violation (PostgreSQL aborts
        # it otherwise), so the error can be explained with what the database holds.
        try:
            with self._uow.active().savepoint():
                case_id = self._run(sql.insert_case.insert, values)
        except IntegrityError as exc:
            self._explain_refused_add(case, exc)
        case.id = case_id
        self._loaded[case_id] = fixed_fields(case)
        return case_id

    def _explain_refused_add(self, case: Case, exc: IntegrityError) -> NoReturn:
        if case.submission_key is not None:
            earlier = self.by_submission_key(case.submission_key)
            if earlier is not None:
                raise Conflict(
                    f"submission {case.submission_key} already created case {earlier.id}"
                ) from exc
        raise exc

    def save(self, case: Case, expected_version: int) -> None:
        """A checked write (``Prepared.defer_checked``): on PostgreSQL it goes out with the next
        statement, and a miss raises ``Conflict`` there or at the commit."""
        values = self._save_values(case, expected_version)
        self._run_checked(self._uow.statements.update_case, values, lambda: case_moved(case.id))
        self._saved.add(id_of(case))
        self._read_with_record.pop(id_of(case), None)

    def _save_values(self, case: Case, expected_version: int) -> dict[str, Any]:
        if case.id is None:
            raise ValueError("save() needs a stored case; use add() for a new one")
        loaded = self._loaded.get(case.id)
        if loaded is not None and loaded != fixed_fields(case):
            changed = [
                name
                for name, was, now in zip(FIXED_FIELDS, loaded, fixed_fields(case), strict=True)
                if was != now
            ]
            raise ValueError(
                f"case {case.id}: {', '.join(changed)} cannot change after submission "
                "(save() writes only the fields transitions change)"
            )
        values = case_mutable_values(case)
        values["where_id"] = case.id
        values["where_version"] = expected_version
        return values

    def list(self, query: CaseQuery) -> list[Case]:
        wanted = {
            "state": query.state.value if query.state else None,
            "type": query.type.value if query.type else None,
            "merchant_id": query.merchant_id,
            "buyer_id": query.buyer_id,
            "order_id": query.order_id,
            "after_id": query.after_id,
        }
        params = {name: value for name, value in wanted.items() if value is not None}
        statement = self._uow.statements.case_list(frozenset(params))
        params["limit"] = query.limit
        return [self._load(row) for row in self._run(statement.rows, params)]

    def search(self, query: CaseQuery, now: datetime) -> builtins.list[QueueRow]:
        """One statement; two for the deadline sort when the cases with a deadline do not fill
        the page (``persistence.case_search``)."""
        start = query.start()
        deadline_bound = _deadline_bound(query, now)
        shape = SearchShape(
            equal=frozenset(
                name
                for name in ("type", "merchant_id", "buyer_id", "order_id")
                if getattr(query, name) is not None
            ),
            states=len(query.wanted_states()),
            text=query.text is not None,
            text_id=query.text_id() is not None,
            due_before=deadline_bound is not None,
            disputed=query.disputed,
            sort=query.sort,
            descending=query.descending,
            timed=True,
            after=start is not None,
        )
        params: dict[str, Any] = {
            name: getattr(query, name).value if name == "type" else getattr(query, name)
            for name in shape.equal
        }
        for i, state in enumerate(sorted(query.wanted_states())):
            params[f"state_{i}"] = state.value
        if query.text is not None:
            params["text"] = query.text
            params["text_id"] = query.text_id()
        params["due_before"] = deadline_bound
        if start is not None:
            params["after_key"], params["after_id"] = start.key, start.case_id
        if query.sort is not CaseSort.DEADLINE:
            return self._search(shape, params, query.limit)
        rows: builtins.list[QueueRow] = []
        past_deadlines = start is not None and start.key is None
        if not past_deadlines:
            rows = self._search(shape, params, query.limit)
        if len(rows) < query.limit and deadline_bound is None:
            # The cases without a deadline, by id: from the cursor's when it is among them.
            untimed = replace(shape, timed=False, after=past_deadlines)
            rows += self._search(untimed, params, query.limit - len(rows))
        return rows

    def _search(
        self, shape: SearchShape, params: dict[str, Any], limit: int
    ) -> builtins.list[QueueRow]:
        statement = self._uow.statements.case_search(shape)
        found = self._run(statement.rows, {**params, "limit": limit})
        rows = []
        for row in found:
            case = self._load(row[:CASE_WIDTH])
            timer_columns = row[CASE_WIDTH:]
            timer: Timer | None = timer_from_row(timer_columns) if timer_columns[0] else None
            rows.append(QueueRow(case, timer, waiting_for(case, timer)))
        return rows

    def merchant_figures(
        self, period: Period, merchant_id: str | None = None
    ) -> builtins.list[MerchantFigures]:
        dialect = self._uow.statements.dialect
        return merchant_figures(self._uow.active(), dialect, period, merchant_id)

    def by_submission_key(self, key: str) -> Case | None:
        row = self._run(self._uow.statements.select_case_by_key.first, {"key": key})
        return self._load(row) if row is not None else None

    def by_reference(
        self, order_id: str | None = None, tracking_no: str | None = None
    ) -> builtins.list[Case]:
        """With ``tracking_no``: the cases (in any state) whose return or outbound parcel has it,
        of ``order_id`` too when given; with ``order_id`` alone: the order's open cases. Newest
        first."""
        sql = self._uow.statements
        if tracking_no is not None:
            if order_id is None:
                statement = sql.select_cases_by_tracking_no
                params = {"tracking_no": tracking_no}
            else:
                statement = sql.select_cases_by_tracking_no_of_order
                params = {"tracking_no": tracking_no, "order_id": order_id}
        elif order_id is not None:
            statement = sql.select_open_cases_of_order
            params = {"order_id": order_id}
        else:
            raise ValueError("by_reference() needs an order_id or a tracking_no")
        return [self._load(row) for row in self._run(statement.rows, params)]


def _deadline_bound(query: CaseQuery, now: datetime) -> datetime | None:
    """The latest due time the query's deadline filters let through; None without them."""
    bounds = []
    if query.overdue:
        bounds.append(now)
    if query.due_within is not None:
        bounds.append(now + query.due_within)
    return min(bounds) if bounds else None
