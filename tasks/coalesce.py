"""Single-event messages applied together by the prefork worker that fetched them.

A Celery task strategy for ``aftersales.ingest_event`` (docs/adr/0003): the worker's main
process hands waiting single events to the pool as one job (``tasks.events.apply_coalesced``),
acknowledges each message after its job returned, and hands each message of a failed job to
Celery's own path. The fence around Celery's worker internals:

- Relies on: ``celery.worker.strategy.default`` (the model, and the fall-back handler),
  ``create_request_cls``, ``Consumer.on_task_request``, ``consumer.qos``'s
  ``increment_eventually``/``decrement_eventually`` (kombu ``QoS``), ``consumer.controller.state
  .revoked``, ``celery.worker.state.task_reserved``/``task_ready``, ``trace.LOG_RECEIVED``/
  ``LOG_SUCCESS``, billiard's ``apply_async`` options (``callback``, ``error_callback``,
  ``timeout``, ``soft_timeout``), ``TaskPool.num_processes`` and ``Request.send_event`` with
  the fields ``default`` and ``Request`` send (``task-received``, ``task-started``,
  ``task-succeeded`` with ``runtime``: what Flower and ``celery events`` read). Checked by
  ``tests/unit/test_library_fences.py``.
- Measured: benchmark 2 (``python -m bench.events_e2e --rounds 3 --latency-seconds 0 --batch 0
  --http 0``), single events 45.4-53.9% of the no-op task without it, 84.0-87.3% with it, side
  by side on one host.
- Upstream: Celery has no batching strategy; ``celery/worker/strategy.py`` ``default`` (celery
  5.7.0) is what this follows. celery-batches does not fit (docs/adr/0007).
- Brokers: on Redis the prefetch it raises is kombu's count; on RabbitMQ it is a ``basic.qos``
  to the server (Celery's channel-wide QoS), and a redelivery carries ``delivery_info
  ["redelivered"]``, which takes the default path. ``tests/workers/test_coalesce.py`` runs on
  both.
- Delete when: Celery ships a strategy that applies several messages in one pool job with an
  ack per message after the job and a per-message fall-back, or when producers send batches
  (``aftersales.ingest_events``) only.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable
from functools import partial
from typing import Any

from celery import Celery, Task, signals
from celery.app import trace
from celery.concurrency.prefork import TaskPool as PreforkPool
from celery.utils.imports import symbol_by_name
from celery.worker import strategy as celery_strategy
from celery.worker.request import create_request_cls
from celery.worker.state import task_ready, task_reserved

#: The ``app.conf`` key holding ``WorkerSettings.event_coalesce_max``.
COALESCE_MAX_KEY = "aftersales_event_coalesce_max"
#: What the pool child runs for a job: a list of envelopes in, a list of statuses out.
APPLY = "tasks.events:apply_coalesced"

logger = logging.getLogger(__name__)

Handler = Callable[..., Any]


def strategy(task: Task, app: Celery, consumer: Any, **kwargs: Any) -> Handler:
    """``Task.Strategy`` of ``aftersales.ingest_event``: the coalescing handler on a prefork
    pool with ``event_coalesce_max`` of 2 or more, Celery's default otherwise.

    Only prefork coalesces: its callbacks run in the main process's event loop, as the strategy
    does, so the bookkeeping needs no lock. The threads and solo pools (the embedded broker's)
    keep the default strategy."""
    default: Handler = celery_strategy.default(task, app, consumer, **kwargs)
    limit = int(app.conf.get(COALESCE_MAX_KEY) or 0)
    if limit < 2 or not isinstance(consumer.pool, PreforkPool):
        return default
    return Coalescer(task, app, consumer, limit, default).handle


class Coalescer:
    """The message handler of one consumer start: waits, jobs, acknowledgements, fall-back."""

    def __init__(self, task: Task, app: Celery, consumer: Any, limit: int, default: Handler):
        self._task = task
        self._app = app
        self._consumer = consumer
        self._limit = limit
        self._default = default
        self._apply = symbol_by_name(APPLY)
        request_class = symbol_by_name(task.Request)
        self._request = create_request_cls(
            request_class,
            task,
            consumer.pool,
            consumer.hostname,
            consumer.event_dispatcher,
            app=app,
        )
        self._logs_info = celery_strategy.logger.isEnabledFor(logging.INFO)
        #: Requests waiting for a job, oldest first.
        self._waiting: deque[Any] = deque()
        #: Jobs handed to the pool and not returned.
        self._running = 0
        #: The QoS whose prefetch each waiting request raised, by the request object's identity
        #: (two deliveries may carry one task id), given back when it is done.
        self._prefetch_raised: dict[int, Any] = {}

    # -- receiving ------------------------------------------------------------------------------
    def handle(
        self, message: Any, body: Any, ack: Any, reject: Any, callbacks: Any, **kwargs: Any
    ) -> None:
        headers = message.headers or {}
        # Only plain first deliveries wait for a job: a retry (ETA, expiry), a redelivery or
        # another shape goes Celery's way, so a poison event cannot fail a job twice.
        if (
            body is not None
            or "args" in message.payload
            or headers.get("eta")
            or headers.get("expires")
            or headers.get("retries")
            or headers.get("redelivered")
            or (message.delivery_info or {}).get("redelivered")
        ):
            self._default(message, body, ack, reject, callbacks, **kwargs)
            return
        request = self._request(
            message,
            on_ack=ack,
            on_reject=reject,
            app=self._app,
            hostname=self._consumer.hostname,
            eventer=self._consumer.event_dispatcher,
            task=self._task,
            connection_errors=self._consumer.connection_errors,
            body=message.body,
            headers=headers,
            decoded=False,
            utc=self._app.uses_utc_timezone(),
        )
        if self._logs_info:
            context = {
                "id": request.id,
                "name": request.name,
                "args": request.argsrepr,
                "kwargs": request.kwargsrepr,
                "eta": request.eta,
            }
            celery_strategy.logger.info(trace.LOG_RECEIVED, context, extra={"data": context})
        if request.id in self._consumer.controller.state.revoked and request.revoked():
            return
        signals.task_received.send(sender=self._consumer, request=request)
        # The event Celery's ``default`` strategy sends (a no-op when events are off), so
        # Flower and ``celery events`` see coalesced messages as they see every other task.
        request.send_event(
            "task-received",
            name=request.name,
            args=request.argsrepr,
            kwargs=request.kwargsrepr,
            root_id=request.root_id,
            parent_id=request.parent_id,
            retries=request.request_dict.get("retries", 0),
            eta=None,
            expires=None,
        )
        task_reserved(request)
        if callbacks:
            for callback in callbacks:
                callback(request)
        if _envelope(request) is None:
            self._consumer.on_task_request(request)
            return
        # Each waiting message raises the prefetch by one (as Celery does for ETA tasks), up to
        # the limit, so the worker still fetches while messages wait.
        if len(self._prefetch_raised) < self._limit:
            qos = self._consumer.qos
            qos.increment_eventually()
            self._prefetch_raised[id(request)] = qos
        self._waiting.append(request)
        self._dispatch()

    # -- the pool -------------------------------------------------------------------------------
    def _dispatch(self) -> None:
        """Hand waiting requests to the pool while it has a process our jobs do not occupy."""
        while self._waiting and self._running < self._jobs_at_once():
            count = min(len(self._waiting), self._limit)
            batch = [self._waiting.popleft() for _ in range(count)]
            self._running += 1
            conf = self._app.conf
            try:
                self._consumer.pool.apply_async(
                    self._apply,
                    args=([_envelope(request) for request in batch],),
                    callback=partial(self._returned, batch, time.monotonic()),
                    error_callback=partial(self._failed, batch),
                    timeout=conf.task_time_limit,
                    soft_timeout=conf.task_soft_time_limit,
                )
            except Exception as exc:  # the pool refused the job: Celery's path decides
                self._running -= 1
                self._fall_back(batch, repr(exc))
                return
            for request in batch:
                request.send_event("task-started")

    def _jobs_at_once(self) -> int:
        """One job per two pool processes, at least one: a job of many events keeps its core
        busy, and the other half of the pool stays free for relays, notices and sweeps."""
        processes = int(getattr(self._consumer.pool, "num_processes", 1) or 1)
        return max(1, processes // 2)

    def _returned(self, batch: list[Any], started: float, statuses: Any) -> None:
        self._running -= 1
        if not isinstance(statuses, list) or len(statuses) != len(batch):
            # Not what apply_coalesced returns: trust nothing of it.
            self._fall_back(batch, f"unexpected result {statuses!r:.200}")
            return
        runtime = time.monotonic() - started
        if self._logs_info:
            logger.info(
                "coalesced job of %d %s messages returned in %.6fs",
                len(batch),
                self._task.name,
                runtime,
            )
        for request, status in zip(batch, statuses, strict=True):
            self._give_back(request)
            request.acknowledge()
            task_ready(request, successful=True)
            # As ``Request.on_success`` reports a task: the job's runtime, as in the log line.
            request.send_event("task-succeeded", result=repr(status), runtime=runtime)
            if self._logs_info:
                # Celery's own success line (trace.LOG_SUCCESS), the job's runtime as the
                # task's: log readers that follow a task id (the live demo, tests) still work.
                logger.info(
                    trace.LOG_SUCCESS,
                    {
                        "id": request.id,
                        "name": request.name,
                        "return_value": repr(status),
                        "runtime": runtime,
                    },
                )
        self._dispatch()

    def _failed(self, batch: list[Any], exc_info: Any) -> None:
        self._running -= 1
        exc = getattr(exc_info, "exception", exc_info)
        # billiard wraps what a child raised (as Request.on_failure unwraps it).
        self._fall_back(batch, repr(getattr(exc, "exc", exc)))

    def _fall_back(self, batch: list[Any], why: str) -> None:
        logger.warning(
            "%d coalesced %s messages failed together (%s); each runs alone now",
            len(batch),
            self._task.name,
            why[:500],
        )
        for request in batch:
            self._give_back(request)
            self._consumer.on_task_request(request)
        self._dispatch()

    def _give_back(self, request: Any) -> None:
        qos = self._prefetch_raised.pop(id(request), None)
        # After a reconnection the consumer has a new QoS: the old one is gone with its channel.
        if qos is not None and qos is self._consumer.qos:
            qos.decrement_eventually()


def _envelope(request: Any) -> Any:
    """The one envelope a request carries (``ingest_event(event)``), or None for any other
    shape, which Celery's own path then reports as the task would."""
    args, kwargs = request.args, request.kwargs
    if len(args) == 1 and not kwargs:
        return args[0]
    if not args and set(kwargs) == {"event"}:
        return kwargs["event"]
    return None
