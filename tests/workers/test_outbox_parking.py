"""An outbox row whose consumer keeps failing is parked by real workers, counted, and sent again
when an admin retries it: Redis with PostgreSQL, the embedded broker with SQLite."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest

from workflow.model import OutboxEntry, OutboxMessage
from workflow.relay import ParkedOutbox

from .conftest import wait_for
from .support import Stack, open_stack, stack_params

#: Publishes before the relay parks a row, and the redelivery window (s), small for the test.
MAX_ATTEMPTS = 2
REDELIVER_AFTER_S = 1
#: No case has this id: the pickup consumer fails on it every time (``NotFound``, not retried).
NO_SUCH_CASE = 999_999


@pytest.fixture(params=stack_params())
def stack(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Stack]:
    broker, database_kind = request.param
    env = {
        "AFTERSALES_OUTBOX_MAX_ATTEMPTS": str(MAX_ATTEMPTS),
        "AFTERSALES_OUTBOX_REDELIVER_AFTER_S": str(REDELIVER_AFTER_S),
    }
    with open_stack(request, tmp_path, broker, database_kind, env=env) as opened:
        yield opened


def _parked_after_time_passes(stack: Stack, parked: ParkedOutbox) -> list[OutboxEntry]:
    """Move the shared clock past the redelivery window at each look, until a row is parked."""

    def look() -> list[OutboxEntry]:
        stack.advance(timedelta(seconds=REDELIVER_AFTER_S + 1))
        return parked.parked(10)

    found: list[OutboxEntry] = wait_for(look, "the failing row to be parked", every=0.5)
    return found


def _failed_pickups(stack: Stack) -> int:
    return stack.task_runs("aftersales.book_pickup", "failed")


def test_a_row_whose_consumer_keeps_failing_is_parked_counted_and_retried(stack: Stack) -> None:
    # given a worker with beat inside, and a pickup row for a case that does not exist
    [worker] = stack.start_workers(1)
    with stack.service.uow_factory() as uow:
        uow.outbox.add([OutboxMessage("pickup.requested", NO_SUCH_CASE, {}, stack.now())])
        uow.commit()
    parked = ParkedOutbox(stack.service.uow_factory, stack.clock)

    # when the relay publishes it, its consumer fails, and the window passes, again and again
    [entry] = _parked_after_time_passes(stack, parked)

    # then the relay parked it after its second publish, and said so
    assert entry.attempts == MAX_ATTEMPTS
    stack.wait_log(worker, rf"outbox entry {entry.id} \(pickup.requested", "the parking line")
    with stack.service.uow_factory() as uow:
        assert uow.outbox.backlog() == 0
    # and the worker counted each failed run in the database, for /metrics
    wait_for(lambda: _failed_pickups(stack) >= MAX_ATTEMPTS, "the failed runs to be counted")

    # when an admin retries it
    result = parked.retry([entry.id], "admin:ops", "carrier account fixed")
    assert [retried.id for retried in result.retried] == [entry.id]

    # then the relay publishes it again from a fresh budget, and (still failing) parks it again
    [again] = _parked_after_time_passes(stack, parked)
    assert (again.id, again.attempts) == (entry.id, MAX_ATTEMPTS)
    assert again.parked_at is not None and entry.parked_at is not None
    assert again.parked_at > entry.parked_at
    wait_for(lambda: _failed_pickups(stack) >= 2 * MAX_ATTEMPTS, "the retried runs to be counted")
