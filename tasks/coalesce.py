"""Single-event messages applied together by the prefork worker that fetched them.

A producer that sends one event per message (``aftersales.ingest_event``) paid a transaction,
a commit and a pool round trip per event, where a batch message (``aftersales.ingest_events``)
shares them among up to a hundred: on the 2-core bench machine a pool child spent about 1.9 ms
of CPU per single event against 0.6 ms per batched one (BENCHMARKS.md, benchmark 2). So the
worker's main process, which receives every message, hands single events to the pool as jobs
of its own (``tasks.events.apply_coalesced``: ``EventService.ingest_many``, a savepoint each, one
commit), at most one job per two pool processes at a time: the pool has two processes per core
so that waits on the database overlap, but a job of many events keeps its core busy, and the
other half of the pool stays free for relays, notifications and sweeps. An event that arrives
when a job may start goes at once, alone; the ones that arrive while the jobs run wait and go
together in the next, at most as long as a running job (milliseconds; benchmark 2 measured
p50 / p99 9 / 63 ms at the pace where one event per message gave 8 / 44 ms).

It is a Celery task strategy (``Task.Strategy``, built per consumer start by
``Consumer.update_strategies``; celery/worker/strategy.py ``default`` is the model), so the
messages stay Celery's: received, reserved, acknowledged and requeued by its machinery.

- **Acknowledged late, as before.** A message is acknowledged when the job that applied its
  event has returned; until then it is an unacknowledged delivery, which the broker gives back
  if this worker dies (Redis: after the visibility timeout; at once on a warm shutdown), like a
  prefetched message.
- **Any failure falls back to Celery's own path.** If a job raises (the database is down), its
  child dies, or it passes the time limit, each of its messages is handed to
  ``consumer.on_task_request``, the default strategy's last step, and runs alone with the task's
  retries, dead letters and worker-lost requeue, exactly as if it had never been held. Events
  that did commit are then recognised as duplicates (the dedupe record).
- **Only plain first deliveries are held.** A message with an ETA or expiry (a retry), one
  the broker redelivered, or one whose arguments are not one envelope goes the default way,
  so a poison event cannot take a job's other events with it twice.
- **Bounded.** The worker's prefetch stays one message per process; each held message raises
  it by one (``QoS.increment_eventually``, as Celery does for ETA tasks) up to
  ``event_coalesce_max`` (``AFTERSALES_EVENT_COALESCE_MAX``), and gives it back when done. So a
  worker takes at most that many messages more than it would have, and a job carries at most
  that many events. 0 turns coalescing off.

Only the prefork pool coalesces: its callbacks run in the main process's event loop, as the
strategy does, so the bookkeeping here needs no lock. The threads and solo pools (the embedded
broker's) keep the default strategy.
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
    pool with ``event_coalesce_max`` of 2 or more, Celery's default otherwise."""
    default: Handler = celery_strategy.default(task, app, consumer, **kwargs)
    limit = int(app.conf.get(COALESCE_MAX_KEY) or 0)
    if limit < 2 or not isinstance(consumer.pool, PreforkPool):
        return default
    return Coalescer(task, app, consumer, limit, default).handle


class Coalescer:
    """The message handler of one consumer start (see the module doc)."""

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
        #: Held requests not handed to the pool yet, oldest first.
        self._waiting: deque[Any] = deque()
        #: Jobs handed to the pool and not returned.
        self._running = 0
        #: The QoS each held request raised, by the request object's identity (two deliveries
        #: may carry one task id), given back when it is done.
        self._raised: dict[int, Any] = {}

    # -- receiving ------------------------------------------------------------------------------
    def handle(
        self, message: Any, body: Any, ack: Any, reject: Any, callbacks: Any, **kwargs: Any
    ) -> None:
        headers = message.headers or {}
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
        task_reserved(request)
        if callbacks:
            for callback in callbacks:
                callback(request)
        if _envelope(request) is None:
            self._consumer.on_task_request(request)
            return
        if len(self._raised) < self._limit:
            qos = self._consumer.qos
            qos.increment_eventually()
            self._raised[id(request)] = qos
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

    def _jobs_at_once(self) -> int:
        """One job per two pool processes (see the module doc), at least one."""
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
        qos = self._raised.pop(id(request), None)
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
