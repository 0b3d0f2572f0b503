"""Times in the database are instants: any offset in, the same instant (in UTC) out, and SQL
comparisons agree with Python's."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta, timezone

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from persistence.unit_of_work import SqlUnitOfWorkFactory
from workflow.model import Case, Timer
from workflow.states import CaseState

_offsets = st.integers(min_value=-14 * 60, max_value=14 * 60).map(
    lambda minutes: timezone(timedelta(minutes=minutes))
)
_instants = st.datetimes(
    min_value=datetime(1971, 1, 1), max_value=datetime(2200, 1, 1), timezones=_offsets
)


@settings(
    max_examples=40,
    deadline=None,
    # The database fixture is shared by the examples on purpose; each example rolls back.
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(due=st.lists(_instants, min_size=1, max_size=6), as_of=_instants)
def test_due_agrees_with_python_on_instants(
    uow_factory: SqlUnitOfWorkFactory,
    new_case: Callable[..., Case],
    due: list[datetime],
    as_of: datetime,
) -> None:
    with uow_factory() as uow:
        armed = []
        for n, moment in enumerate(due):
            case_id = uow.cases.add(new_case(order_id=f"o-{n}"))
            timer = Timer(
                case_id, "merchant_review", "auto_approve", CaseState.SUBMITTED, 1, moment, moment
            )
            uow.timers.arm(timer)
            armed.append(timer)

        found = uow.timers.due(as_of, limit=len(armed))

        expected = sorted((t for t in armed if t.due_at <= as_of), key=lambda t: (t.due_at, t.id))
        assert [t.id for t in found] == [t.id for t in expected]
        for timer in found:
            assert timer.due_at.tzinfo is UTC
            assert timer.created_at == timer.due_at
        for timer in armed:
            assert timer.id is not None
            stored = uow.timers.get(timer.id)
            assert stored is not None and stored.due_at == timer.due_at
