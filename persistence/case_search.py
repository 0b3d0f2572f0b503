"""The SQL of ``CaseRepository.search``: one SELECT per shape of query, built here and compiled
once per shape (``Statements.case_search``).

Each shape is read in the order of an index, so a page costs its rows, not the table
(migration 0011, docs/adr/0011-case-queue-indexes.md):

- by id: the primary key (or ``ix_cases_merchant_id_id`` / ``ix_cases_buyer_id_id`` when scoped);
- by age: ``ix_cases_created_at_id``;
- by deadline: first the cases with a live timer, driven from the timers in
  ``ix_timers_live_due_at_case_id`` order (due time, case id), then (a second statement, only
  when the page is not full and no deadline filter is set) the cases without one, by id.

A page resumes after its cursor with a row-value comparison (``(key, id) > (:key, :id)``), which
both databases answer as the start of an index range.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa

from persistence.tables import cases, timers, transitions
from workflow.queries import CaseSort

#: Literals, not bind parameters: the planners use a partial index only when the query repeats
#: its predicate verbatim.
_LIVE = timers.c.status.in_([sa.literal_column("'pending'"), sa.literal_column("'claimed'")])
_DISPUTED = transitions.c.to_state == sa.literal_column("'disputed'")


@dataclass(frozen=True)
class SearchShape:
    """What decides the SQL text of a search (the values are bind parameters)."""

    #: Names of the equality filters given: ``type``, ``merchant_id``, ``buyer_id``, ``order_id``.
    equal: frozenset[str]
    #: How many states are asked for (``state_0`` ...); 0 for any.
    states: int
    #: ``text`` given; ``text_id``: and it can be a case id.
    text: bool
    text_id: bool
    #: A deadline bound is given (``due_before``): overdue, or due within some time.
    due_before: bool
    disputed: bool | None
    sort: CaseSort
    descending: bool
    #: For the deadline sort: True reads the cases with a live timer, False those without.
    timed: bool
    #: Resume after ``after_key`` / ``after_id`` (``after_id`` alone for id orders).
    after: bool


def search_statement(shape: SearchShape) -> sa.Select[Any]:
    live_timer = sa.and_(timers.c.case_id == cases.c.id, _LIVE)
    timed = shape.sort is CaseSort.DEADLINE and shape.timed
    if timed or shape.due_before:
        source = sa.select(cases, timers).select_from(timers.join(cases, live_timer))
    else:
        source = sa.select(cases, timers).select_from(cases.outerjoin(timers, live_timer))
    where: list[sa.ColumnElement[bool]] = [
        cases.c[name] == sa.bindparam(name) for name in sorted(shape.equal)
    ]
    if shape.states:
        where.append(cases.c.state.in_([sa.bindparam(f"state_{i}") for i in range(shape.states)]))
    if shape.text:
        text = sa.bindparam("text", type_=sa.String())
        matches = [
            cases.c.order_id == text,
            cases.c.buyer_id == text,
            cases.c.return_tracking_no == text,
            cases.c.outbound_tracking_no == text,
        ]
        if shape.text_id:
            matches.append(cases.c.id == sa.bindparam("text_id", type_=sa.BigInteger()))
        where.append(sa.or_(*matches))
    if shape.due_before:
        where.append(timers.c.due_at <= sa.bindparam("due_before", type_=timers.c.due_at.type))
    if shape.disputed is not None:
        ever = sa.exists().where(transitions.c.case_id == cases.c.id, _DISPUTED)
        where.append(ever if shape.disputed else ~ever)
    if shape.sort is CaseSort.DEADLINE and not shape.timed:
        # The outer join finds no live timer: an anti-join on the live timers' unique index.
        where.append(timers.c.id.is_(None))
    keys = _sort_columns(shape)
    if shape.after:
        position = sa.tuple_(*keys)
        cursor = sa.tuple_(*(_after_param(column) for column in keys))
        where.append(position < cursor if shape.descending else position > cursor)
    order = [key.desc() if shape.descending else key.asc() for key in keys]
    return source.where(*where).order_by(*order).limit(sa.bindparam("limit"))


def _sort_columns(shape: SearchShape) -> list[sa.ColumnElement[Any]]:
    if shape.sort is CaseSort.DEADLINE and shape.timed:
        # timers.case_id, not cases.id: the index holds it, so the order is the index's.
        return [timers.c.due_at, timers.c.case_id]
    if shape.sort is CaseSort.AGE:
        return [cases.c.created_at, cases.c.id]
    return [cases.c.id]


def _after_param(column: sa.ColumnElement[Any]) -> sa.BindParameter[Any]:
    name = "after_id" if column.key in ("id", "case_id") else "after_key"
    return sa.bindparam(name, type_=column.type)
