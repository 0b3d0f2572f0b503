"""The outbox relay on the in-memory stores: a row published and lost by the broker is published
again once ``redeliver_after`` has passed, until a consumer completes it."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime, timedelta

import pytest

from workflow.clock import FakeClock
from workflow.errors import InvalidInput
from workflow.memory import InMemoryDatabase, InMemoryUnitOfWorkFactory
from workflow.model import OutboxEntry, OutboxMessage
from workflow.relay import REDELIVER_AFTER, OutboxRelay, ParkedOutbox

T0 = datetime(2026, 11, 20, 2, 0, tzinfo=UTC)


class Broker:
    """Keeps what it is given, until it "restarts" and loses it all (as Redis without disk)."""

    def __init__(self) -> None:
        self.queue: list[OutboxEntry] = []
        self.sent: list[int] = []

    def publish(self, entries: Sequence[OutboxEntry]) -> None:
        self.queue.extend(entries)
        self.sent.extend(entry.id for entry in entries)

    def restart(self) -> None:
        self.queue.clear()


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(T0)


@pytest.fixture
def broker() -> Broker:
    return Broker()


@pytest.fixture
def relay(uow_factory: InMemoryUnitOfWorkFactory, broker: Broker, clock: FakeClock) -> OutboxRelay:
    return OutboxRelay(uow_factory, broker.publish, clock)


def _written(uow_factory: InMemoryUnitOfWorkFactory, count: int) -> None:
    with uow_factory() as uow:
        uow.outbox.add([OutboxMessage("t", 1, {"n": n}, T0) for n in range(count)])
        uow.commit()


def test_a_lost_message_is_published_again_until_completed(
    uow_factory: InMemoryUnitOfWorkFactory,
    db: InMemoryDatabase,
    relay: OutboxRelay,
    broker: Broker,
    clock: FakeClock,
) -> None:
    # given: two rows, published, then lost by a broker restart
    _written(uow_factory, 2)
    assert relay.relay() == 2
    broker.restart()
    assert relay.backlog() == 2  # published, not completed

    # when: the relay runs within the window, nothing goes out again
    assert relay.relay() == 0
    clock.advance(REDELIVER_AFTER)
    assert relay.relay() == 0  # exactly the window: not yet

    # then: after the window both go out a second time
    clock.advance(timedelta(seconds=1))
    assert relay.relay() == 2
    assert broker.sent == [1, 2, 1, 2]
    assert [(e.attempts, e.published_at) for e in db.outbox] == [(2, clock.now())] * 2

    # when: a consumer completes the first (twice: a redelivered message completes it again)
    relay.complete(1)
    completed_at = clock.now()
    clock.advance(timedelta(minutes=5))
    relay.complete(1)

    # then: only the second is published again, and once completed nothing is
    assert relay.relay() == 1
    assert broker.sent[-1] == 2
    assert db.outbox[0].completed_at == completed_at
    assert relay.backlog() == 1
    assert relay.oldest_pending_age() == (clock.now() - T0).total_seconds()
    relay.complete(2)
    clock.advance(timedelta(days=1))
    assert relay.relay() == 0
    assert broker.sent == [1, 2, 1, 2, 2]
    assert relay.backlog() == 0
    assert relay.oldest_pending_age() is None


def test_without_redelivery_a_published_row_goes_out_once(
    uow_factory: InMemoryUnitOfWorkFactory, relay: OutboxRelay, broker: Broker, clock: FakeClock
) -> None:
    _written(uow_factory, 1)
    assert relay.relay(redeliver_after=None) == 1
    clock.advance(timedelta(days=1))
    assert relay.relay(redeliver_after=None) == 0
    assert relay.relay(redeliver_after=timedelta(hours=1)) == 1
    assert broker.sent == [1, 1]


def test_one_call_publishes_each_row_at_most_once(
    uow_factory: InMemoryUnitOfWorkFactory, relay: OutboxRelay, broker: Broker, clock: FakeClock
) -> None:
    # given: two lost rows and a new one, and a relay that redelivers at once
    _written(uow_factory, 2)
    relay.relay()
    _written(uow_factory, 1)
    clock.advance(timedelta(seconds=1))
    # when: it runs in batches of one; then each row goes out once, not once per batch
    assert relay.relay(batch=1, max_batches=10, redeliver_after=timedelta(0)) == 3
    assert broker.sent == [1, 2, 1, 2, 3]


def test_a_negative_window_is_refused(relay: OutboxRelay) -> None:
    with pytest.raises(ValueError, match="must not be negative"):
        relay.relay(redeliver_after=timedelta(seconds=-1))


def test_a_row_no_consumer_completes_is_parked_after_max_attempts_and_retried_by_an_admin(
    uow_factory: InMemoryUnitOfWorkFactory,
    db: InMemoryDatabase,
    relay: OutboxRelay,
    broker: Broker,
    clock: FakeClock,
    caplog: pytest.LogCaptureFixture,
) -> None:
    # given a row whose consumer fails every time (never completes it), and one that works
    _written(uow_factory, 2)
    window = timedelta(seconds=60)
    past_window = window + timedelta(seconds=1)

    # when the relay runs past each redelivery window, with three attempts allowed
    assert relay.relay(redeliver_after=window, max_attempts=3) == 2
    relay.complete(2)
    for _ in range(2):
        clock.advance(past_window)
        assert relay.relay(redeliver_after=window, max_attempts=3) == 1
    clock.advance(past_window)
    with caplog.at_level("WARNING", logger="workflow.relay"):
        assert relay.relay(redeliver_after=window, max_attempts=3) == 0

    # then it went out three times, is parked (said in the log), and no longer goes out
    assert broker.sent == [1, 2, 1, 1]
    assert "outbox entry 1 (t, case 1) parked: published 3 times" in caplog.text
    clock.advance(timedelta(days=1))
    assert relay.relay(redeliver_after=window, max_attempts=3) == 0
    assert relay.backlog() == 0 and relay.oldest_pending_age() is None
    parked = ParkedOutbox(uow_factory, clock)
    [entry] = parked.parked(10)
    assert (entry.id, entry.attempts, entry.parked_at) == (1, 3, T0 + 3 * past_window)

    # when an admin retries it (and names an id that is not parked)
    result = parked.retry([1, 2, 1], "admin:ops", "  consumer fixed  ")

    # then it is published at the relay's next run, with the whole budget again, and the retry
    # is recorded with who, why, and what the row had been through
    assert ([e.id for e in result.retried], result.not_parked) == ([1], [2])
    assert db.outbox_retries == [
        (1, "admin:ops", clock.now(), "consumer fixed", 3, entry.parked_at)
    ]
    assert relay.relay(redeliver_after=window, max_attempts=3) == 1
    assert db.outbox[0].attempts == 1 and db.outbox[0].parked_at is None


@pytest.mark.parametrize(
    ("ids", "by", "reason", "field"),
    [
        ([1], "", "why", "actor"),
        ([1], "admin", "  ", "reason"),
        ([1], "admin", "x" * 2001, "reason"),
        ([], "admin", "why", "ids"),
        (list(range(1, 1002)), "admin", "why", "ids"),
    ],
)
def test_a_retry_needs_who_why_and_a_bounded_list(
    uow_factory: InMemoryUnitOfWorkFactory,
    clock: FakeClock,
    ids: list[int],
    by: str,
    reason: str,
    field: str,
) -> None:
    with pytest.raises(InvalidInput) as refused:
        ParkedOutbox(uow_factory, clock).retry(ids, by, reason)
    assert refused.value.field == field


def test_the_relay_refuses_a_budget_below_one(relay: OutboxRelay) -> None:
    with pytest.raises(ValueError, match="max_attempts must be at least 1"):
        relay.relay(max_attempts=0)
