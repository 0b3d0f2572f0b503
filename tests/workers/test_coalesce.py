"""Single-event messages applied together by a prefork worker (tasks/coalesce.py), on Redis and
on RabbitMQ with PostgreSQL, with real worker processes: the events still take effect once
each, every message is acknowledged, and a job that fails hands its messages to Celery's own
path.

The worker logs each job (``coalesced job of N ... messages``) and, per message, Celery's own
success line from its main process; a message that ran alone through Celery's path has its
success line from a pool process (``ForkPoolWorker``) instead.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
import sqlalchemy as sa

from entrypoints.processes import ChildProcess
from persistence.db import make_engine

from .conftest import wait_for
from .support import SERVER_STACKS, Stack, merchant, open_stack, stack_params, submit

_JOB = re.compile(r"coalesced job of (?P<count>\d+) aftersales\.ingest_event messages")


@pytest.fixture(params=stack_params(*SERVER_STACKS))
def stack_kind(request: pytest.FixtureRequest) -> tuple[str, str]:
    broker, database_kind = request.param
    return str(broker), str(database_kind)


def _jobs(stack: Stack) -> list[int]:
    """The sizes of the coalesced jobs the workers ran, in order."""
    return [int(m["count"]) for _, text in stack.runtime.logs() for m in _JOB.finditer(text)]


def _broker_empty(stack: Stack) -> bool:
    """No message waits in the default queue and none is delivered but unacknowledged."""
    vhost = stack.runtime.vhost
    if vhost is not None:
        return vhost.queues().get("celery") == (0, 0)
    prefix = stack.runtime.settings.broker.key_prefix
    client = redis.Redis.from_url(str(stack.runtime.settings.broker.url))
    try:
        return client.llen(f"{prefix}celery") == 0 and client.hlen(f"{prefix}unacked") == 0
    finally:
        client.close()


def _worker_and_cases(stack: Stack, prefix: str, count: int) -> tuple[ChildProcess, list[int]]:
    """One worker (2 pool processes) and ``count`` submitted cases of orders ``<prefix>-<n>``."""
    (worker,) = stack.start_workers(1, beat=False)
    return worker, [submit(stack, "return_refund", f"{prefix}-{n}") for n in range(count)]


@contextlib.contextmanager
def _dedupe_table_locked(stack: Stack) -> Iterator[sa.Connection]:
    """``inbound_events`` locked until the block ends or the connection given rolls back:
    every event's transaction waits on it."""
    with make_engine(stack.database_url).connect() as locker:
        locker.execute(sa.text("LOCK TABLE inbound_events IN ACCESS EXCLUSIVE MODE"))
        yield locker


def _succeeded_in(stack: Stack, task_id: str) -> str:
    """The process that logged the task's success line (``MainProcess``, ``ForkPoolWorker-1``)."""
    line = re.compile(
        rf"INFO/(?P<process>[\w-]+)\] Task aftersales\.ingest_event\[{task_id}\] succeeded"
    )
    for _, text in stack.runtime.logs():
        match = line.search(text)
        if match:
            return match["process"]
    raise AssertionError(f"no success line for {task_id}")


def test_events_that_wait_for_a_busy_pool_are_applied_together_each_once(
    request: pytest.FixtureRequest, tmp_path: Path, stack_kind: tuple[str, str]
) -> None:
    with open_stack(request, tmp_path, *stack_kind) as stack:
        # given 40 submitted cases, and for each the merchant's approval sent as a message of
        # its own, with 10 of them sent twice; all queued before any worker runs
        cases = [submit(stack, "return_refund", f"o-co-{n}") for n in range(40)]
        approvals = [merchant(stack, "approved", case) for case in cases]
        task_ids = stack.send_events(*approvals, *approvals[:10])
        # when one worker starts (2 pool processes: one coalesced job at a time)
        stack.start_workers(1, beat=False)
        outcomes = stack.outcomes(task_ids)

        # then every first delivery was applied and every copy was a duplicate
        assert outcomes[:40] == ["applied"] * 40
        assert outcomes[40:] == ["duplicate"] * 10
        # and the messages waiting behind a job went together
        jobs = _jobs(stack)
        assert sum(jobs) == 50
        assert max(jobs) >= 2, jobs
        # and each case was approved once, by its event
        for case in cases:
            assert stack.triggers(case).count("approve") == 1
        # and every message was acknowledged
        wait_for(lambda: _broker_empty(stack), "no message queued or unacknowledged")


def test_a_failed_job_hands_each_message_to_celerys_own_path(
    request: pytest.FixtureRequest, tmp_path: Path, stack_kind: tuple[str, str]
) -> None:
    with open_stack(request, tmp_path, *stack_kind) as stack:
        worker, cases = _worker_and_cases(stack, "o-fail", 3)
        # given the dedupe table locked, so that the first job waits past its soft time limit
        with _dedupe_table_locked(stack) as locker:
            first, *others = stack.send_events(*(merchant(stack, "approved", c) for c in cases))
            # when that job fails (SoftTimeLimitExceeded) and the lock goes
            stack.wait_log(worker, r"failed together", "the job to fail")
            locker.rollback()
        outcomes = stack.outcomes([first, *others])

        # then every event was applied once
        assert outcomes == ["applied"] * 3
        for case in cases:
            assert stack.triggers(case).count("approve") == 1
        # and the failed job's message ran alone in a pool process, through the task itself,
        # at once (received once: not redelivered by the broker after the visibility timeout)
        assert _succeeded_in(stack, first).startswith("ForkPoolWorker")
        received = f"Task aftersales.ingest_event[{first}] received"
        assert sum(text.count(received) for _, text in stack.runtime.logs()) == 1
        assert _jobs(stack)  # the others went through a coalesced job after the lock went
        wait_for(lambda: _broker_empty(stack), "no message queued or unacknowledged")


def test_a_job_whose_pool_process_is_killed_hands_its_messages_to_celerys_own_path(
    request: pytest.FixtureRequest, tmp_path: Path, stack_kind: tuple[str, str]
) -> None:
    with open_stack(request, tmp_path, *stack_kind) as stack:
        worker, cases = _worker_and_cases(stack, "o-kill", 2)
        engine = make_engine(stack.database_url)
        waiting_on_lock = sa.text(
            "SELECT count(*) FROM pg_stat_activity "
            "WHERE datname = current_database() AND wait_event_type = 'Lock'"
        )

        def lock_waits() -> int:
            # A connection of its own each time: statistics views keep one snapshot per
            # transaction.
            with engine.connect() as observer:
                return int(observer.execute(waiting_on_lock).scalar_one())

        # given a job of the first event stuck in a pool process (the dedupe table locked)
        with _dedupe_table_locked(stack) as locker:
            first, second = stack.send_events(*(merchant(stack, "approved", c) for c in cases))
            wait_for(lambda: lock_waits() >= 1, "the job to wait on the lock")
            # when every pool process is killed (kill -9) and the lock goes
            for child in worker.children():
                os.kill(child, signal.SIGKILL)
            stack.wait_log(worker, r"failed together \(WorkerLostError", "the job to be lost")
            locker.rollback()
        outcomes = stack.outcomes([first, second])

        # then both events were applied once, the lost job's alone through Celery's own path
        # and at once (not redelivered by the broker after the visibility timeout)
        assert outcomes == ["applied", "applied"]
        for case in cases:
            assert stack.triggers(case).count("approve") == 1
        assert _succeeded_in(stack, first).startswith("ForkPoolWorker")
        received = f"Task aftersales.ingest_event[{first}] received"
        assert sum(text.count(received) for _, text in stack.runtime.logs()) == 1
        wait_for(lambda: _broker_empty(stack), "no message queued or unacknowledged")


@pytest.mark.parametrize("stack_kind", stack_params("amqp-postgres"), indirect=True)
def test_events_held_for_a_job_when_rabbitmq_closes_the_connection_take_effect_once(
    request: pytest.FixtureRequest, tmp_path: Path, stack_kind: tuple[str, str]
) -> None:
    with open_stack(request, tmp_path, *stack_kind) as stack:
        vhost = stack.runtime.vhost
        assert vhost is not None
        worker, cases = _worker_and_cases(stack, "o-held", 12)
        # given the dedupe table locked: the first event's job waits in a pool process, and the
        # others wait in the worker's main process for the next job, every one unacknowledged
        with _dedupe_table_locked(stack) as locker:
            task_ids = stack.send_events(*(merchant(stack, "approved", c) for c in cases))
            wait_for(
                lambda: vhost.queues().get("celery") == (0, len(cases)),
                "every message delivered and held",
            )
            # when the server closes the worker's connection (their acknowledgements can no
            # longer reach it: it requeues all twelve) and the lock goes
            assert vhost.close_connections() >= 1
            stack.wait_log(worker, r"Connection to broker lost", "the worker to see it go")
            wait_for(
                lambda: worker.output().count("Connected to amqp://") >= 2,
                "the worker to reconnect",
            )
            locker.rollback()
        # then every event took effect once: the copies the server delivered again found their
        # event recorded (or the held ones did, whichever ran second)
        outcomes = stack.outcomes(task_ids)
        assert set(outcomes) <= {"applied", "duplicate"}, outcomes
        for case in cases:
            wait_for(lambda case=case: "approve" in stack.triggers(case), f"case {case} approved")
            assert stack.triggers(case).count("approve") == 1
        assert stack.dead_letters() == []
        # and nothing stays queued or unacknowledged, and the worker lives on
        wait_for(lambda: _broker_empty(stack), "no message queued or unacknowledged")
        assert worker.alive()
