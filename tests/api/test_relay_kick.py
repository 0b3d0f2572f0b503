"""A transition made over HTTP asks the workers for an outbox relay at once (``tasks/kick.py``):
the kick lands in the real broker, a burst of transitions coalesces, and a broker that is down
costs the request nothing (the relay's sweep publishes the rows anyway)."""

from __future__ import annotations

import itertools
import json
import os
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from broker_peek import queued_task_names

from config.settings import ApiSettings, BrokerSettings, DatabaseSettings, Settings
from tasks.app import create_app
from tasks.kick import RELAY_TASK, RelayKicker

from .conftest import Api

REDIS_ENV = "AFTERSALES_TEST_REDIS_URL"
#: A Redis database of its own, so no worker of another test consumes the kick first.
KICK_DB = 13
FLUSH_S = 10.0

_orders = itertools.count(1)


def _approve(api: Api) -> int:
    # One open case per order item: each approval is on an order of its own.
    case_id = api.submit(order_id=f"o-{next(_orders)}")
    response = api.client.post(
        f"/cases/{case_id}/transitions",
        json={"trigger": "approve"},
        headers=api.auth("merchant:m1"),
    )
    assert response.status_code == 200, response.text
    return case_id


def _kicker(api: Api) -> RelayKicker:
    kicker = api.app.state.relay_kicker
    assert isinstance(kicker, RelayKicker)
    assert kicker.flush(FLUSH_S), "the kick was neither sent nor failed"
    return kicker


def _queued_tasks(api: Api, folder: Path) -> list[str]:
    """Task names of the messages waiting in the app's embedded broker."""
    return queued_task_names(
        Settings(
            database=DatabaseSettings(url=api.database_url),
            broker=BrokerSettings(url=f"filesystem://{folder / 'broker'}"),
            policy_file=None,
            clock_file=None,
        )
    )


def test_an_http_transition_kicks_the_relay_through_the_broker(
    make_api: Callable[..., Api], tmp_path: Path
) -> None:
    # given the API on the embedded broker and a submitted case, its kicks drained
    api = make_api()
    case_id = api.submit(order_id="o-kick")
    before = _kicker(api).sent
    _queued_tasks(api, tmp_path / "app0")
    # when the merchant approves the return over HTTP (which writes the pickup booking's row)
    response = api.client.post(
        f"/cases/{case_id}/transitions",
        json={"trigger": "approve"},
        headers=api.auth("merchant:m1"),
    )
    assert response.status_code == 200, response.text
    # then one more relay task is waiting in the broker for the workers
    assert _kicker(api).sent == before + 1
    assert _queued_tasks(api, tmp_path / "app0") == [RELAY_TASK]


def test_a_broker_that_is_down_costs_the_request_nothing(
    make_api: Callable[..., Api],
) -> None:
    # given the API configured with a Redis broker where nothing listens
    api = make_api(broker_url="redis://127.0.0.1:9/0")
    # when a transition writes outbox rows
    case_id = _approve(api)
    # then the request succeeded, the kick failed quietly, and the rows wait for the sweep
    kicker = _kicker(api)
    assert kicker.sent == 0 and kicker.failed >= 1
    assert api.cases.get(case_id).case.state.value == "approved"


def test_kicks_can_be_switched_off(make_api: Callable[..., Api]) -> None:
    api = make_api(ApiSettings(rate_limit_per_minute=0, kick_relay=False))
    _approve(api)
    assert api.app.state.relay_kicker is None


@pytest.fixture
def redis_broker() -> Iterator[tuple[str, redis.Redis[Any]]]:
    base = os.environ.get(REDIS_ENV)
    if not base:
        pytest.skip(f"{REDIS_ENV} is not set")
    url = f"{base.rsplit('/', 1)[0]}/{KICK_DB}"
    client: redis.Redis[Any] = redis.Redis.from_url(url)
    client.flushdb()
    yield url, client
    client.flushdb()


def test_on_redis_a_burst_of_transitions_sends_at_most_one_kick_per_commit(
    make_api: Callable[..., Api], redis_broker: tuple[str, redis.Redis[Any]]
) -> None:
    url, client = redis_broker
    api = make_api(broker_url=url)
    # when ten transitions commit in a row
    for _ in range(10):
        _approve(api)
    kicker = _kicker(api)
    # then every kick asked for was sent (none failed), at most one per commit that wrote
    # outbox rows (ten submissions, ten approvals), and the Redis queue holds exactly those
    assert 1 <= kicker.sent <= 20 and kicker.failed == 0
    queued = [json.loads(raw)["headers"]["task"] for raw in client.lrange("celery", 0, -1)]
    assert queued == [RELAY_TASK] * kicker.sent


def test_a_worker_kicker_sends_one_kick_per_interval_however_many_commits(
    redis_broker: tuple[str, redis.Redis[Any]], tmp_path: Path
) -> None:
    url, client = redis_broker
    app = create_app(
        Settings(
            database=DatabaseSettings(url=f"sqlite:///{tmp_path / 'k.db'}"),
            broker=BrokerSettings(url=url),
        )
    )
    in_interval, interval_over = threading.Event(), threading.Event()

    def sleep(_: float) -> None:
        in_interval.set()
        interval_over.wait(FLUSH_S)

    kicker = RelayKicker(app, min_interval_s=0.1, sleep=sleep)
    # given a first commit, whose kick leaves at once
    kicker()
    assert in_interval.wait(FLUSH_S), "the first kick did not leave"
    # when fifty more commits ask for kicks within the interval
    for _ in range(50):
        kicker()
    queued = [json.loads(raw)["headers"]["task"] for raw in client.lrange("celery", 0, -1)]
    assert queued == [RELAY_TASK]
    # then they share one kick, sent when the interval is over
    interval_over.set()
    assert kicker.flush(FLUSH_S)
    queued = [json.loads(raw)["headers"]["task"] for raw in client.lrange("celery", 0, -1)]
    assert (queued, kicker.sent, kicker.failed) == ([RELAY_TASK] * 2, 2, 0)
