"""Faults on real workers: a worker killed with SIGKILL while it pays a refund, Redis restarted
mid-run, the workers' PostgreSQL sessions ended mid-run, events delivered several times and out
of order, two schedulers at once. (The long versions: ``bench/chaos_kill.py`` and
``bench/chaos_outages.py``.)

Each test ends on the invariants the service promises: every effect once (one payment, one
transition per event, one firing per timer), every case where it belongs, every outbox row
completed.
"""

from __future__ import annotations

import re
import shutil
import threading
import uuid
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from entrypoints.processes import ChildProcess
from tasks.app import DEFAULT_QUEUE
from tasks.kick import RELAY_TASK
from workflow.states import CaseState

from .conftest import DEADLINE_S, wait_for
from .rabbitmq import RabbitNode, can_run_a_node
from .support import (
    SERVER_STACKS,
    T0,
    RedisServer,
    Stack,
    carrier,
    drop_worker_connections,
    envelope,
    merchant,
    open_stack,
    stack_params,
    submit,
    tag_worker_connections,
)

#: The fake gateway's simulated time on a refund call (ms): long enough for a kill to land on
#: the call, well inside the tasks' soft time limit (4 s in these tests).
SLOW_PAYMENT_MS = 2000

_REFUND_RECEIVED = r"Task aftersales\.execute_refund\[[0-9a-f-]+\] received"
#: The refund task of a worker paid (or found paid) and confirmed the refund.
_REFUND_DONE = r"Task aftersales\.execute_refund\[[0-9a-f-]+\] succeeded in [\d.e-]+s: 'done'"


@pytest.fixture(params=stack_params())
def stack_kind(request: pytest.FixtureRequest) -> tuple[str, str]:
    broker, database_kind = request.param
    return str(broker), str(database_kind)


def _applied(stack: Stack, *envelopes: dict[str, Any]) -> None:
    outcomes = stack.outcomes(stack.send_events(*envelopes))
    assert outcomes == ["applied"] * len(envelopes), outcomes


# -- kill -9 during a refund --------------------------------------------------------------------


def test_kill9_on_the_gateway_call_of_a_refund_pays_it_exactly_once(
    request: pytest.FixtureRequest, tmp_path: Path, stack_kind: tuple[str, str]
) -> None:
    env = {"AFTERSALES_FAKE_PAYMENT_LATENCY_MS": str(SLOW_PAYMENT_MS)}
    with open_stack(request, tmp_path, *stack_kind, env=env) as stack:
        # given one worker (with beat) and a refund-only case the merchant approves
        (first,) = stack.start_workers(1)
        case = submit(stack, "refund_only", "o-kill")
        _applied(stack, merchant(stack, "approved", case))
        # when the worker is killed with SIGKILL while the slow gateway is on the refund's call
        stack.wait_log(first, _REFUND_RECEIVED, "the refund task to start")
        first.kill()
        # (the kill did land before the gateway recorded anything)
        assert stack.ledger(case) == []
        assert stack.state(case) is CaseState.REFUNDING
        # and a new worker starts
        second = stack.start_worker(beat=True)

        # then it gets the refund again (at once on the embedded broker and on RabbitMQ, after
        # the visibility timeout on Redis) and the case is refunded
        stack.wait_state(case, CaseState.REFUNDED)
        stack.wait_log(second, _REFUND_DONE, "the new worker to confirm the refund")
        # with exactly one payment, under the attempt's key, and one confirmation
        _assert_paid_once(stack, case)


@pytest.mark.parametrize("stack_kind", stack_params(*SERVER_STACKS), indirect=True)
def test_kill9_between_the_payment_and_its_confirmation_pays_it_exactly_once(
    request: pytest.FixtureRequest, tmp_path: Path, stack_kind: tuple[str, str]
) -> None:
    env = {"AFTERSALES_FAKE_PAYMENT_LATENCY_MS": str(SLOW_PAYMENT_MS)}
    with open_stack(request, tmp_path, *stack_kind, env=env) as stack:
        # given one worker (with beat) and a refund-only case the merchant approves
        (first,) = stack.start_workers(1)
        case = submit(stack, "refund_only", "o-kill")
        _applied(stack, merchant(stack, "approved", case))
        stack.wait_state(case, CaseState.REFUNDING)
        # when the gateway has paid but the worker's confirmation is held up (the test holds
        # the case's row lock while the gateway call runs), and the worker is killed then
        with stack.case_locked(case):
            wait_for(lambda: stack.ledger(case), "the gateway to record the payment")
            first.kill()
        assert len(stack.ledger(case)) == 1
        assert stack.state(case) is CaseState.REFUNDING
        # and a new worker starts
        second = stack.start_worker(beat=True)

        # then the redelivered refund is answered from the gateway's ledger and confirmed
        stack.wait_state(case, CaseState.REFUNDED)
        stack.wait_log(second, _REFUND_DONE, "the new worker to confirm the refund")
        # with exactly one payment, and one confirmation
        _assert_paid_once(stack, case)


def _assert_paid_once(stack: Stack, case: int) -> None:
    ledger = stack.ledger(case)
    assert [(e.idempotency_key, e.amount, e.status) for e in ledger] == [
        (f"refund-{case}-1", 19900, "succeeded")
    ]
    assert stack.triggers(case) == ["submit", "approve", "start_refund", "confirm_refund"]
    assert stack.service.get(case).case.details["refund_reference"] == ledger[0].reference
    stack.wait_outbox_completed()


# -- Redis restarted mid-run -------------------------------------------------------------------


@pytest.mark.skipif(shutil.which("redis-server") is None, reason="needs redis-server")
@pytest.mark.parametrize("stack_kind", stack_params("redis-postgres"), indirect=True)
def test_redis_restart_mid_run_loses_no_timer_and_no_outbox_row(
    request: pytest.FixtureRequest, tmp_path: Path, stack_kind: tuple[str, str]
) -> None:
    # given a Redis of the test's own (CI's flags: nothing saved), two workers (beat in one) and
    # a notifier slow enough that messages wait in Redis
    server = RedisServer(tmp_path / "redis")
    server.start()
    request.addfinalizer(server.stop)
    env = {"AFTERSALES_FAKE_NOTIFIER_LATENCY_MS": "300"}
    with open_stack(request, tmp_path, *stack_kind, broker_url=server.url, env=env) as stack:
        workers = stack.start_workers(2)
        cases = [submit(stack, "return_refund", f"o-restart-{n}") for n in range(20)]
        stack.wait_outbox_completed()
        # and their review deadlines pass: the workers start approving and booking pickups
        stack.clock.set(T0 + timedelta(hours=49))
        # and more of their effects are published than the workers hold (two each): some wait
        # in Redis's queue
        wait_for(lambda: stack.in_flight() > 2 * 2 * len(workers), "effects in flight")
        # (held there: the workers drained a short queue before the shutdown in a CI run; and
        # effects, not only relay kicks, whose loss no outbox row would show, in another)
        queue = stack.runtime.settings.broker.key_prefix + DEFAULT_QUEUE
        wait_for(
            lambda: server.freeze_with_queued(queue, ignore={RELAY_TASK}), "effects queued in Redis"
        )

        # when Redis shuts down without saving (queued and unacknowledged messages are lost)
        server.shutdown_nosave()
        for worker in workers:
            stack.wait_log(worker, r"Connection to broker lost", "the workers to see it go")
        # and comes back empty on the same port
        server.start()

        # then the workers connect again by themselves
        def reconnected() -> bool:
            for worker in workers:
                why = _gave_up(worker)
                if why is not None:
                    pytest.fail(f"{worker.log.name} exited after the Redis restart: {why}")
            return all(_connected_again(worker) for worker in workers)

        wait_for(reconnected, "the workers to reconnect")
        # and time passes: the relay publishes again what was published over a minute ago and
        # never completed (its window, ``workflow.relay.REDELIVER_AFTER``, is not a setting),
        # and a timer claimed by a sweep the outage interrupted is claimed again after
        # ``AFTERSALES_TIMER_RECLAIM_AFTER_S`` (120 s)
        stack.advance(timedelta(minutes=3))

        # and every due timer fired, once, and every case got its pickup booked
        stack.wait_states(dict.fromkeys(cases, CaseState.PICKUP), timeout=60)
        for case in cases:
            assert stack.triggers(case) == ["submit", "auto_approve", "book_pickup"], case
            assert stack.fired_timers(case) == ["merchant_review"], case
        # and every outbox row was completed, those Redis lost published again by the relay
        stack.wait_outbox_completed(timeout=60)
        assert any(row.attempts > 1 for row in stack.outbox_rows())
        # and the same workers did it, nobody restarted them
        assert all(worker.alive() for worker in workers)


@pytest.mark.redis
@pytest.mark.skipif(shutil.which("redis-server") is None, reason="needs redis-server")
def test_a_worker_running_a_task_reconnects_after_a_redis_restart(
    request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    """Without ``tasks.consumer.ReconnectingConsumer`` (celery 5.7.0, kombu 5.7.0) the worker
    exits with "Unrecoverable error: AttributeError: 'NoneType' object has no attribute
    'hostname'" here instead of reconnecting; the module says why."""
    server = RedisServer(tmp_path / "redis")
    server.start()
    request.addfinalizer(server.stop)
    with open_stack(request, tmp_path, "redis", "sqlite", broker_url=server.url) as stack:
        # given a worker running a task (acknowledged late: unacknowledged while it runs), with
        # a pool slot free
        (worker,) = stack.start_workers(1, beat=False)
        token = uuid.uuid4().hex
        stack.runtime.app.send_task("aftersales_test.hold", args=[str(tmp_path), token])
        wait_for(lambda: list(tmp_path.glob(f"{token}.started.*")), "the task to start")
        # when Redis goes away and comes back
        server.shutdown_nosave()
        stack.wait_log(worker, r"Connection to broker lost", "the worker to see it go")
        server.start()

        # then the worker connects again by itself, and runs tasks
        def reconnected() -> bool:
            why = _gave_up(worker)
            if why is not None:
                pytest.fail(f"the worker exited instead of reconnecting: {why}")
            return _connected_again(worker)

        wait_for(reconnected, "the worker to reconnect")
        (tmp_path / f"{token}.release").touch()
        stack.runtime.ping(worker)


# -- RabbitMQ connections closed mid-run -----------------------------------------------------
#
# The shared RabbitMQ is not restarted (other test runs use it): the server closes the test's
# own connections instead (``rabbitmqctl close_connection``), which is what a worker sees of a
# node restart or a network cut. Queues and messages live on in the server, so unlike Redis
# without persistence nothing is lost and nothing needs the relay's redelivery.


@pytest.mark.amqp
def test_a_worker_running_a_task_reconnects_after_rabbitmq_closes_its_connection(
    request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    with open_stack(request, tmp_path, "amqp", "sqlite") as stack:
        vhost = stack.runtime.vhost
        assert vhost is not None
        # given a worker running a task (acknowledged late: unacknowledged while it runs), with
        # a pool slot free
        (worker,) = stack.start_workers(1, beat=False)
        token = uuid.uuid4().hex
        stack.runtime.app.send_task("aftersales_test.hold", args=[str(tmp_path), token])
        wait_for(lambda: list(tmp_path.glob(f"{token}.started.*")), "the task to start")
        # when the server closes the worker's connections
        assert vhost.close_connections() >= 1
        stack.wait_log(worker, r"Connection to broker lost", "the worker to see it go")

        # then the worker connects again by itself
        def reconnected() -> bool:
            why = _gave_up(worker)
            if why is not None:
                pytest.fail(f"the worker exited instead of reconnecting: {why}")
            return worker.output().count("Connected to amqp://") >= 2

        wait_for(reconnected, "the worker to reconnect")
        # and the task, requeued by the server when the channel closed, runs to its end (its
        # first run's acknowledgement went to the closed channel: it runs again, idempotent)
        (tmp_path / f"{token}.release").touch()
        wait_for(lambda: list(tmp_path.glob(f"{token}.done.*")), "the task to complete")
        stack.runtime.ping(worker)
        # and nothing stays queued or unacknowledged
        wait_for(lambda: vhost.queues().get("celery") == (0, 0), "the queue to be empty")
        assert worker.alive()


#: Times the server closes the workers' connections while effects are queued and running.
CLOSE_ROUNDS = 3


@pytest.mark.parametrize("stack_kind", stack_params("amqp-postgres"), indirect=True)
def test_rabbitmq_connections_closed_mid_run_lose_no_timer_and_no_message(
    request: pytest.FixtureRequest, tmp_path: Path, stack_kind: tuple[str, str]
) -> None:
    # given two workers (beat in one), and a carrier (pickups) and a notifier slow enough that
    # messages wait in RabbitMQ
    env = {
        "AFTERSALES_FAKE_SHIPPER_LATENCY_MS": "300",
        "AFTERSALES_FAKE_NOTIFIER_LATENCY_MS": "300",
    }
    with open_stack(request, tmp_path, *stack_kind, env=env) as stack:
        vhost = stack.runtime.vhost
        assert vhost is not None
        workers = stack.start_workers(2)
        cases = [submit(stack, "return_refund", f"o-close-{n}") for n in range(20)]
        stack.wait_outbox_completed()
        # and their review deadlines pass: the workers start approving and booking pickups
        stack.clock.set(T0 + timedelta(hours=49))

        # when, while messages wait in the queue (and the workers hold others, unacknowledged),
        # the server closes every connection of the workers (and of beat), again and again
        # (more than the few sweeps and relay kicks in flight: pickups wait behind the carrier)
        wait_for(lambda: vhost.ready(DEFAULT_QUEUE) >= 5, "effects queued in RabbitMQ")
        rounds = 0
        for _ in range(CLOSE_ROUNDS):
            if rounds and stack.pending_outbox() == 0:
                break
            before = [worker.output().count("Connected to amqp://") for worker in workers]
            assert vhost.close_connections() >= len(workers)
            rounds += 1

            # then the workers connect again by themselves
            def reconnected(before: list[int] = before) -> bool:
                for worker in workers:
                    why = _gave_up(worker)
                    if why is not None:
                        pytest.fail(f"{worker.log.name} exited after its connection closed: {why}")
                counts = [worker.output().count("Connected to amqp://") for worker in workers]
                return all(now > then for now, then in zip(counts, before, strict=True))

            wait_for(reconnected, "the workers to reconnect")
        assert rounds >= 1

        # and, with the clock standing still (the relay publishes nothing again: its window of
        # ``OUTBOX_REDELIVER_AFTER_S`` never passes), every due timer fired once and every case
        # got its pickup booked
        stack.wait_states(dict.fromkeys(cases, CaseState.PICKUP), timeout=60)
        for case in cases:
            assert stack.triggers(case) == ["submit", "auto_approve", "book_pickup"], case
            assert stack.fired_timers(case) == ["merchant_review"], case
        # and no outbox row was published twice: RabbitMQ kept what was queued and requeued what
        # the closed channels held (a relay whose publish failed rolled back and published
        # again: those rows' first messages may have arrived unmarked, 0)
        stack.wait_outbox_completed(timeout=60)
        assert max(row.attempts for row in stack.outbox_rows()) <= 1
        wait_for(lambda: vhost.queues().get("celery") == (0, 0), "the queue to be empty")
        # and the same workers did it, nobody restarted them
        assert all(worker.alive() for worker in workers)


@pytest.mark.skipif(can_run_a_node() is not None, reason=str(can_run_a_node()))
@pytest.mark.parametrize("stack_kind", stack_params("amqp-postgres"), indirect=True)
def test_rabbitmq_killed_and_restarted_mid_run_loses_no_timer_and_no_message(
    request: pytest.FixtureRequest, tmp_path: Path, stack_kind: tuple[str, str]
) -> None:
    # given a RabbitMQ node of the test's own, two workers (beat in one), and a carrier and a
    # notifier slow enough that messages wait in the queue
    node = RabbitNode(tmp_path / "rabbitmq")
    node.start()
    request.addfinalizer(node.stop)
    env = {
        "AFTERSALES_FAKE_CARRIER_LATENCY_MS": "1000",
        "AFTERSALES_FAKE_NOTIFIER_LATENCY_MS": "300",
    }
    with open_stack(request, tmp_path, *stack_kind, broker_url=node.url, env=env) as stack:
        workers = stack.start_workers(2)
        cases = [submit(stack, "return_refund", f"o-rmqkill-{n}") for n in range(20)]
        stack.wait_outbox_completed()
        # and their review deadlines pass: the workers start approving and booking pickups
        stack.clock.set(T0 + timedelta(hours=49))
        # (more than the few sweeps and relay kicks in flight: pickups wait behind the carrier)
        wait_for(lambda: node.ready(DEFAULT_QUEUE) >= 10, "effects queued in RabbitMQ")

        # when the node is killed with SIGKILL (no flush, no goodbye) and started again
        node.kill()
        for worker in workers:
            stack.wait_log(worker, r"Connection to broker lost", "the workers to see it go")
        node.start()

        # then the workers connect again by themselves
        def reconnected() -> bool:
            for worker in workers:
                why = _gave_up(worker)
                if why is not None:
                    pytest.fail(f"{worker.log.name} exited after the node's restart: {why}")
            return all(worker.output().count("Connected to amqp://") >= 2 for worker in workers)

        wait_for(reconnected, "the workers to reconnect", timeout=90)
        # and, with the clock standing still (no redelivery by the relay), every due timer fired
        # once and every case got its pickup booked
        stack.wait_states(dict.fromkeys(cases, CaseState.PICKUP), timeout=90)
        for case in cases:
            assert stack.triggers(case) == ["submit", "auto_approve", "book_pickup"], case
            assert stack.fired_timers(case) == ["merchant_review"], case
        # and every outbox row was completed without being published twice: the messages
        # RabbitMQ had confirmed were on its disk (durable queues, persistent messages), the ones
        # it held unacknowledged came back as ready. (A relay whose publish failed in the outage
        # rolled back and published again: its first messages may have arrived unmarked, 0.)
        stack.wait_outbox_completed(timeout=60)
        assert max(row.attempts for row in stack.outbox_rows()) <= 1
        wait_for(lambda: node.ready(DEFAULT_QUEUE) == 0, "the queue to be empty")
        assert all(worker.alive() for worker in workers)


def _gave_up(worker: ChildProcess) -> str | None:
    """Why the worker stopped instead of reconnecting, or None while it has not."""
    crash = re.search(r"Unrecoverable error: .*", worker.output())
    if crash:
        return crash[0]
    return None if worker.alive() else f"exit code {worker.returncode}"


def _connected_again(worker: ChildProcess) -> bool:
    return worker.output().count("Connected to redis://") >= 2


# -- PostgreSQL connections dropped mid-run -------------------------------------------------------

#: Rounds of ``pg_terminate_backend`` that must each end at least one worker connection while
#: the cases move, and the pause between rounds (s).
DROP_ROUNDS = 8
DROP_EVERY_S = 0.3


class ConnectionDropper:
    """A thread ending the workers' PostgreSQL sessions every ``DROP_EVERY_S`` until told to stop
    (and at least until ``DROP_ROUNDS`` rounds hit something)."""

    def __init__(self, database_url: str) -> None:
        self.database_url = database_url
        self.rounds_that_hit = 0
        self.dropped = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> ConnectionDropper:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=DEADLINE_S)

    def _run(self) -> None:
        while not self._stop.wait(DROP_EVERY_S):
            dropped = drop_worker_connections(self.database_url)
            self.dropped += dropped
            self.rounds_that_hit += dropped > 0


@pytest.mark.parametrize("stack_kind", stack_params(*SERVER_STACKS), indirect=True)
def test_postgres_connections_dropped_mid_run_lose_nothing(
    request: pytest.FixtureRequest, tmp_path: Path, stack_kind: tuple[str, str]
) -> None:
    # given two workers (beat in one) whose PostgreSQL sessions can be told apart from the
    # test's own, and a payment gateway slow enough that refunds hold connections
    env = {"AFTERSALES_FAKE_PAYMENT_LATENCY_MS": "100", "AFTERSALES_FAKE_NOTIFIER_LATENCY_MS": "50"}
    with open_stack(request, tmp_path, *stack_kind, env=env) as stack:
        tag_worker_connections(stack)
        workers = stack.start_workers(2)
        returns = [submit(stack, "return_refund", f"o-pgdrop-r{n}") for n in range(8)]
        refunds = [submit(stack, "refund_only", f"o-pgdrop-f{n}") for n in range(8)]
        stack.wait_outbox_completed()

        # when the server ends every worker session again and again while the merchants'
        # approvals arrive (events), the review deadlines pass (timers) and refunds are paid
        # (effects)
        with ConnectionDropper(stack.database_url) as dropper:
            stack.send_events(*(merchant(stack, "approved", case) for case in refunds))
            # (the approvals applied before the clock passes their review deadline: else
            # ``auto_approve`` may fire first, as it did once under load in CI)
            wait_for(
                lambda: all("approve" in stack.triggers(case) for case in refunds),
                "the merchants' approvals to be applied",
                timeout=60,
            )
            stack.clock.set(T0 + timedelta(hours=49))
            wait_for(
                lambda: dropper.rounds_that_hit >= DROP_ROUNDS,
                f"{DROP_ROUNDS} rounds of dropped worker connections",
                timeout=60,
            )
        # and time passes: claims of sweeps that lost their connection are taken again after
        # AFTERSALES_TIMER_RECLAIM_AFTER_S (120 s), unfinished outbox rows published again
        stack.advance(timedelta(minutes=3))

        # then every case got where it belongs, each step once
        expected = dict.fromkeys(returns, CaseState.PICKUP) | dict.fromkeys(
            refunds, CaseState.REFUNDED
        )
        stack.wait_states(expected, timeout=90)
        for case in returns:
            assert stack.triggers(case) == ["submit", "auto_approve", "book_pickup"], case
            assert _fired_once(stack, case, "merchant_review"), case
        # and each refund was paid once and confirmed once
        for case in refunds:
            _assert_paid_once(stack, case)
        # and every outbox row was completed, every timer settled, no event dead-lettered
        stack.wait_outbox_completed(timeout=60)
        assert all(row.status != "claimed" for row in stack.timer_rows())
        assert stack.dead_letters() == []
        # and the same workers did it: nobody restarted them
        assert all(worker.alive() for worker in workers)
        assert dropper.dropped >= DROP_ROUNDS


# -- duplicate and reordered events ------------------------------------------------------------


def test_duplicate_and_reordered_events_take_effect_once(
    request: pytest.FixtureRequest, tmp_path: Path, stack_kind: tuple[str, str]
) -> None:
    with open_stack(request, tmp_path, *stack_kind) as stack:
        # given two workers (beat in one) and a return
        stack.start_workers(2)
        case = submit(stack, "return_refund", "o-dup")

        def three_times(event: dict[str, Any]) -> list[str]:
            """Deliver the same event three times at once; the sorted outcomes."""
            return sorted(stack.outcomes(stack.send_events(event, event, event)))

        once = ["applied", "duplicate", "duplicate"]
        # when the merchant's approval arrives three times
        assert three_times(merchant(stack, "approved", case)) == once
        stack.wait_state(case, CaseState.PICKUP)
        # and the carrier's delivery arrives (three times) before its pickup (three times)
        assert three_times(carrier(stack, "delivered", case, "SF77")) == once
        assert stack.state(case) is CaseState.RETURN_DELIVERED
        picked_up = carrier(stack, "picked_up", case, "SF77")
        assert three_times(picked_up) == ["duplicate", "duplicate", "ignored"]
        # and the merchant's receipt and inspection, three times each
        assert three_times(merchant(stack, "receipt_confirmed", case)) == once
        assert three_times(merchant(stack, "inspected", case)) == once
        # and the payment gateway reports the refund a worker made, three times, as soon as
        # it has recorded it (before or after the worker's own confirmation)
        (payment,) = wait_for(lambda: stack.ledger(case), "the refund payment")
        succeeded = envelope(
            stack,
            "wechat-pay",
            "refund.succeeded",
            case,
            data={
                "idempotency_key": payment.idempotency_key,
                "reference": payment.reference,
                "amount": payment.amount,
            },
        )
        assert three_times(succeeded) in (once, ["duplicate", "duplicate", "ignored"])
        stack.wait_state(case, CaseState.REFUNDED)

        # then each event took effect once: one transition per step, one payment (confirmed by
        # the worker, or by the gateway's report if it came first)
        history = stack.history(case)
        assert history[-1][1] in ("payment", "payment:wechat-pay")
        assert history == [
            ("submit", "buyer:b1", "submitted"),
            ("approve", "merchant:m1", "approved"),
            ("book_pickup", "system", "pickup"),
            ("record_pickup", "carrier:sf-express", "shipped_back"),
            ("record_return_delivery", "carrier:sf-express", "return_delivered"),
            ("confirm_receipt", "merchant:m1", "received"),
            ("inspect", "merchant:m1", "inspected"),
            ("start_refund", "system", "refunding"),
            ("confirm_refund", history[-1][1], "refunded"),
        ]
        assert len(stack.ledger(case)) == 1
        # and each effect was asked for once and carried out
        stack.wait_outbox_completed()
        topics = [row.topic for row in stack.outbox_rows()]
        assert topics.count("pickup.requested") == 1
        assert topics.count("refund.requested") == 1
        assert stack.dead_letters() == []


# -- two schedulers ----------------------------------------------------------------------------


def test_two_beats_fire_each_timer_once(
    request: pytest.FixtureRequest, tmp_path: Path, stack_kind: tuple[str, str]
) -> None:
    # given two schedulers (the docs ask for one: this is the mistake) sending sweeps every
    # 0.1 s each, two workers, and sweeps of a few timers each so that many run at once
    env = {"AFTERSALES_TIMER_SWEEP_INTERVAL_S": "0.1", "AFTERSALES_TIMER_SWEEP_BATCH": "3"}
    with open_stack(request, tmp_path, *stack_kind, env=env) as stack:
        beats = [stack.start_beat(), stack.start_beat()]
        stack.wait_ready(stack.start_worker(), stack.start_worker())
        for beat in beats:
            stack.wait_log(beat, r"Sending due task aftersales\.sweep_timers", "both beats")
        # and cases whose deadlines all fall due at T0 + 7 days: refunds waiting for a bank
        # account since T0 (their reminder is a transition to the same state, so a second
        # firing would show), and applications submitted at T0 + 5 days (48 h review)
        waiting = [
            submit(stack, "refund_only", f"o-bank-{n}", payment=_CARD_PAID_LONG_AGO)
            for n in range(12)
        ]
        _applied(stack, *(merchant(stack, "approved", case) for case in waiting))
        stack.wait_states(dict.fromkeys(waiting, CaseState.AWAITING_BANK_ACCOUNT))
        stack.clock.set(T0 + timedelta(days=5))
        reviews = [submit(stack, "return_refund", f"o-review-{n}") for n in range(12)]
        deadlines = [stack.service.get(case).deadline for case in waiting + reviews]
        assert {d.due_at if d else None for d in deadlines} == {T0 + timedelta(days=7)}
        stack.wait_outbox_completed()

        # when the clock passes that instant
        stack.clock.set(T0 + timedelta(days=7, minutes=1))

        # then each timer fired exactly once, and moved its case once
        stack.wait_states(dict.fromkeys(reviews, CaseState.PICKUP))
        wait_for(
            lambda: all("remind_bank_account" in stack.triggers(case) for case in waiting),
            "the reminders",
        )
        stack.wait_outbox_completed()
        for case in reviews:
            assert stack.triggers(case) == ["submit", "auto_approve", "book_pickup"], case
            assert _fired_once(stack, case, "merchant_review")
        for case in waiting:
            assert stack.triggers(case) == [
                "submit",
                "approve",
                "start_refund",
                "remind_bank_account",
            ], case
            assert _fired_once(stack, case, "bank_account_reminder")
        # and the buyers were asked for their bank account once, and reminded once
        requests = [row for row in stack.outbox_rows() if row.topic == "bank_account.requested"]
        assert sorted(row.payload["kind"] for row in requests) == sorted(
            ["request", "reminder"] * len(waiting)
        )


#: A card payment older than the card's 180-day refund window: the refund needs a bank account.
_CARD_PAID_LONG_AGO = {"channel": "card", "amount": 19900, "paid_at": "2026-04-01T10:00:00+08:00"}


def _fired_once(stack: Stack, case: int, kind: str) -> bool:
    return [row.status for row in stack.timer_rows(case) if row.kind == kind] == ["fired"]
