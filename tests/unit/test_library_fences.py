"""The library fences of ``tasks/`` (``spool``, ``coalesce``, ``consumer``) still fit the libraries
installed: every private name they use exists with the shape they call it with. An upgrade that
breaks a fence fails here, by name, before a worker test hangs on it (docs/adr/0002, 0003, 0005).
"""

from __future__ import annotations

import inspect
from importlib.metadata import version
from pathlib import Path
from typing import Any

import pytest
from billiard.pool import Pool as BilliardPool
from celery import Task
from celery.app import trace
from celery.concurrency.prefork import TaskPool as PreforkPool
from celery.worker import state as worker_state
from celery.worker import strategy as celery_strategy
from celery.worker.consumer.consumer import Consumer
from celery.worker.request import Request, create_request_cls
from celery.worker.worker import WorkController
from kombu import Connection
from kombu.common import QoS
from kombu.transport import filesystem, virtual
from kombu.transport import redis as kombu_redis
from kombu.transport.virtual import base as virtual_base

from tasks import spool
from tasks.consumer import ReconnectingConsumer, finish_interrupted_polls

#: The releases each fence was read against; a new minor release must be read again (the fence's
#: header says what to check) before this set is widened.
VERIFIED = {"celery": "5.7", "kombu": "5.7", "billiard": "4.3"}


def parameters(function: Any) -> list[str]:
    return list(inspect.signature(function).parameters)


@pytest.mark.parametrize("package", sorted(VERIFIED))
def test_the_fenced_libraries_are_the_releases_the_fences_were_read_against(package: str) -> None:
    # given the version installed (the lock file pins it)
    installed = version(package)
    # then it is the minor release the fences of tasks/ were checked against
    assert installed.split(".")[:2] == VERIFIED[package].split("."), (
        f"{package} {installed} is installed; tasks/spool.py, tasks/coalesce.py and "
        f"tasks/consumer.py were read against {VERIFIED[package]}. Read their headers' "
        "'Relies on' and 'Upstream' again, then update VERIFIED."
    )


# -- tasks/spool.py: kombu's filesystem transport ----------------------------------------------


@pytest.mark.parametrize(
    ("name", "leading"),
    [
        ("_get", ["self", "queue"]),
        ("_put", ["self", "queue", "payload"]),
        ("_restore", ["self", "message"]),
        ("_purge", ["self", "queue"]),
        ("_size", ["self", "queue"]),
        ("basic_ack", ["self", "delivery_tag", "multiple"]),
        ("basic_reject", ["self", "delivery_tag", "requeue"]),
        ("basic_consume", ["self", "queue", "no_ack", "callback", "consumer_tag"]),
        ("__init__", ["self", "connection"]),
    ],
)
def test_the_spool_overrides_methods_kombus_filesystem_channel_still_has(
    name: str, leading: list[str]
) -> None:
    # given the method of kombu's filesystem channel that the spool overrides
    method = getattr(filesystem.Channel, name, None)
    # then it is there and takes what the spool passes, by position
    assert method is not None, f"kombu.transport.filesystem.Channel.{name} is gone"
    assert parameters(method)[: len(leading)] == leading


def test_kombus_qos_requeues_through_the_channels_restore() -> None:
    # given kombu's virtual QoS (acks of every virtual transport live in the worker's memory)
    source = inspect.getsource(virtual_base.QoS)
    # then a reject with requeue and a shutdown's restore still go through Channel._restore,
    # which the spool overrides to drop its claim
    assert "channel._restore" in source
    assert issubclass(spool.Channel, filesystem.Channel)
    assert issubclass(spool.Transport, filesystem.Transport)
    assert isinstance(spool.Transport.global_state, virtual.BrokerState)


def test_a_spool_message_is_claimed_on_fetch_and_deleted_only_on_ack(tmp_path: Path) -> None:
    # given a spool with one message
    with Connection(transport=spool.Transport, transport_options={"data_folder": tmp_path}) as conn:
        queue = conn.SimpleQueue("fence")
        queue.put({"n": 1})
        # when it is fetched
        message = queue.get(timeout=1)
        # then it is a claim (the payload's properties.delivery_tag found it), not yet deleted
        assert message.payload == {"n": 1}
        assert len(list((tmp_path / "claimed").iterdir())) == 1
        assert list((tmp_path / "ready").iterdir()) == []
        # when it is acknowledged, then the claim is gone
        message.ack()
        assert list((tmp_path / "claimed").iterdir()) == []
        queue.close()


# -- tasks/coalesce.py: Celery's task strategy and the worker's QoS ----------------------------


def test_celerys_default_strategy_has_the_shape_the_coalescer_wraps() -> None:
    # given Celery's default strategy, which the coalescer builds and falls back to
    assert Task.Strategy == "celery.worker.strategy:default"
    assert parameters(celery_strategy.default)[:3] == ["task", "app", "consumer"]
    # then its handler still takes (message, body, ack, reject, callbacks)
    assert "def task_message_handler(message, body, ack, reject, callbacks" in inspect.getsource(
        celery_strategy.default
    )
    assert isinstance(celery_strategy.logger.name, str)


def test_the_request_class_and_worker_state_the_coalescer_uses_are_there() -> None:
    assert parameters(create_request_cls)[:5] == ["base", "task", "pool", "hostname", "eventer"]
    assert "app" in parameters(create_request_cls)
    for attribute in ("acknowledge", "revoked", "args", "kwargs", "argsrepr", "kwargsrepr", "eta"):
        assert hasattr(Request, attribute), f"celery Request.{attribute} is gone"
    assert parameters(worker_state.task_reserved)[0] == "request"
    assert parameters(worker_state.task_ready)[:2] == ["request", "successful"]
    # the coalescer reads consumer.controller.state.revoked, as Celery's default strategy does
    assert WorkController.state.fget(object()) is worker_state
    assert hasattr(worker_state, "revoked")
    assert "on_task_request" in parameters(Consumer.__init__)


def test_the_prefetch_can_still_be_raised_and_given_back_one_at_a_time() -> None:
    assert parameters(QoS.increment_eventually) == ["self", "n"]
    assert parameters(QoS.decrement_eventually) == ["self", "n"]


def test_the_pool_still_takes_the_job_options_the_coalescer_passes() -> None:
    options = parameters(BilliardPool.apply_async)
    for option in ("callback", "error_callback", "timeout", "soft_timeout"):
        assert option in options, f"billiard Pool.apply_async lost {option}"
    assert hasattr(PreforkPool, "num_processes")


def test_celerys_log_lines_keep_the_fields_the_coalescer_fills() -> None:
    # log readers (the live demo, worker tests) follow a task id through these two lines
    assert trace.LOG_RECEIVED % {"name": "n", "id": "i"} == "Task n[i] received"
    assert "%(runtime)s" in trace.LOG_SUCCESS
    assert "%(return_value)s" in trace.LOG_SUCCESS


def test_the_events_the_coalescer_sends_are_the_ones_celery_sends() -> None:
    # given the request's event hook and Celery's own senders of the three events
    assert parameters(Request.send_event) == ["self", "type", "fields"]
    strategy_source = inspect.getsource(celery_strategy.default)
    request_source = inspect.getsource(Request)
    # then Celery still names them so (Flower and ``celery events`` follow these names)
    assert "'task-received'" in strategy_source and "retries=" in strategy_source
    assert "self.send_event('task-started')" in request_source
    assert "'task-succeeded', result=retval, runtime=runtime" in request_source


# -- tasks/consumer.py: kombu's Redis channel, Celery's connection-error path ------------------


def test_the_connection_error_path_the_consumer_overrides_is_there() -> None:
    assert parameters(Consumer.on_connection_error_after_connected) == ["self", "exc"]
    assert issubclass(ReconnectingConsumer, Consumer)
    source = inspect.getsource(Consumer.on_connection_error_after_connected)
    # the path the fix runs before: collect() then close() of the broken connection
    assert source.index(".collect(") < source.index(".close")


def test_kombus_redis_channel_still_tracks_and_finishes_its_outstanding_brpop() -> None:
    assert hasattr(kombu_redis.Channel, "_in_poll")
    assert parameters(kombu_redis.Channel._brpop_read)[0] == "self"
    # the channel copies its transport's connection errors in __init__
    assert "self.connection_errors = self.connection.connection_errors" in inspect.getsource(
        kombu_redis.Channel
    )
    assert hasattr(kombu_redis.Transport, "connection_errors")


def test_an_interrupted_poll_is_finished_and_its_connection_error_dropped() -> None:
    # given a channel with a BRPOP outstanding on a dead socket
    class DeadPoll:
        connection_errors = (ConnectionError,)
        _in_poll = object()

        def _brpop_read(self) -> None:
            self._in_poll = None
            raise ConnectionError("socket closed")

    class Transport:
        channels = (DeadPoll(), DeadPoll())

    class BrokenConnection:
        _transport = Transport()

    # when the consumer finishes the interrupted polls, then both are read and nothing raises
    assert finish_interrupted_polls(BrokenConnection()) == 2
