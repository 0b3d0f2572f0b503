"""The SQL stores page through any case search exactly as the in-memory one does: the same
cases in the same order, page by page, for a few hundred random queries over one random set of
cases (deadlines tied and missing, disputes, parcels, states, merchants). The in-memory store is
the plain statement of the rules (filter, sort, slice); the SQL is shaped for the indexes."""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest

from persistence.unit_of_work import SqlUnitOfWorkFactory
from workflow.memory import InMemoryUnitOfWorkFactory
from workflow.model import Case, Timer, TransitionRecord
from workflow.ports import UnitOfWorkFactory
from workflow.queries import CaseQuery, CaseSort, Cursor, sort_key
from workflow.states import CaseState, CaseType

T0 = datetime(2026, 11, 20, 2, 0, tzinfo=UTC)
CASES = 80
QUERIES = 200
STATES = [CaseState.SUBMITTED, CaseState.APPROVED, CaseState.SHIPPED_BACK, CaseState.CLOSED]

NewCase = Callable[..., Case]


def _populate(factory: UnitOfWorkFactory, new_case: NewCase, seed: int) -> None:
    """The same cases, timers and disputes in any store, from ``seed``."""
    rng = random.Random(seed)
    with factory() as uow:
        for n in range(CASES):
            details = {"return_tracking_no": f"SF{n % 7}"} if rng.random() < 0.3 else {}
            case = new_case(
                order_id=f"o-{n % 11}",
                buyer_id=f"b-{n % 5}",
                merchant_id=f"m-{n % 3}",
                state=rng.choice(STATES),
                type=rng.choice([CaseType.RETURN_REFUND, CaseType.EXCHANGE]),
                # Ties on purpose: few distinct instants.
                created_at=T0 - timedelta(hours=rng.randrange(6)),
                details=details,
            )
            case_id = uow.cases.add(case)
            if rng.random() < 0.7:
                due = T0 + timedelta(hours=rng.randrange(-4, 5))
                uow.timers.arm(
                    Timer(case_id, "merchant_review", "auto_approve", case.state, 1, due, T0)
                )
            if rng.random() < 0.2:
                record = TransitionRecord(
                    case_id, 2, "escalate", CaseState.REJECTED, CaseState.DISPUTED, "buyer", T0
                )
                uow.log.append([record])
        uow.commit()


def _random_query(rng: random.Random) -> CaseQuery:
    def maybe(value: object, chance: float = 0.25) -> object:
        return value if rng.random() < chance else None

    states = frozenset(rng.sample(STATES, rng.randrange(3))) if rng.random() < 0.3 else frozenset()
    hours = maybe(rng.randrange(-1, 4))
    return CaseQuery(
        states=states,
        type=maybe(CaseType.EXCHANGE, 0.15),  # type: ignore[arg-type]
        merchant_id=maybe(f"m-{rng.randrange(3)}"),  # type: ignore[arg-type]
        text=maybe(rng.choice(["SF3", "o-4", "b-2", "7", "none"]), 0.2),  # type: ignore[arg-type]
        overdue=rng.random() < 0.2,
        due_within=timedelta(hours=hours) if isinstance(hours, int) and hours >= 0 else None,
        disputed=maybe(rng.random() < 0.5, 0.2),  # type: ignore[arg-type]
        sort=rng.choice(list(CaseSort)),
        descending=rng.random() < 0.5,
        limit=rng.choice([1, 3, 7, 50]),
    )


def _pages(factory: UnitOfWorkFactory, query: CaseQuery) -> list[list[int]]:
    """Every page of ``query``, as case ids, following each page's cursor."""
    pages: list[list[int]] = []
    with factory() as uow:
        while len(pages) <= CASES:
            rows = uow.cases.search(query, T0)
            pages.append([row.case.id or 0 for row in rows])
            if len(rows) < query.limit:
                return pages
            last = rows[-1]
            key = sort_key(query, last.case, last.deadline)
            after = Cursor(query.sort, query.descending, key, last.case.id or 0)
            query = replace(query, after=after)
    raise AssertionError(f"{query} never ends")


@pytest.mark.parametrize("seed", [1])
def test_sql_pages_agree_with_the_in_memory_store(
    uow_factory: SqlUnitOfWorkFactory, new_case: NewCase, seed: int
) -> None:
    # given the same random cases in memory and in the database
    memory = InMemoryUnitOfWorkFactory()
    _populate(memory, new_case, seed)
    _populate(uow_factory, new_case, seed)
    rng = random.Random(seed)

    # when random queries are paged through in both, then the pages are the same
    found_some = 0
    for _ in range(QUERIES):
        query = _random_query(rng)
        expected = _pages(memory, query)
        assert _pages(uow_factory, query) == expected, query
        found_some += bool(expected[0])
    # and the queries were not all empty
    assert found_some > QUERIES // 3
