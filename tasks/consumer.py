"""The worker's broker consumer: Celery's, able to reconnect after Redis went away while it
held a task (``app.conf.worker_consumer``).

The bug (celery 5.7.0, kombu 5.7.0): on a broken Redis connection Celery's
``Consumer.on_connection_error_after_connected`` runs ``connection.collect()`` then
``connection.close()``. With a BRPOP outstanding, the Redis ``Channel.close()`` first reads its
reply; on the dead socket that raises before the channel is marked closed. ``collect()``
swallows it and drops ``transport.client``; the second ``close()`` then requeues the
unacknowledged messages through a client built from ``None`` (``AttributeError: 'NoneType'
object has no attribute 'hostname'``) and Celery shuts the worker down. The fix finishes each
channel's interrupted BRPOP read first, so the first ``close()`` completes (docs/adr/0005).

The fence around kombu's Redis channel internals:

- Relies on: ``Consumer.on_connection_error_after_connected(exc)``, ``connection._transport
  .channels``, the Redis ``Channel._in_poll`` and ``Channel._brpop_read()``,
  ``channel.connection_errors``. Checked by ``tests/unit/test_library_fences.py``.
- Measured: ``tests/workers/test_faults.py::test_a_worker_running_a_task_reconnects_after_a_
  redis_restart`` fails without it; with it every worker reconnected after each of the 6 Redis
  restarts of ``python -m bench.chaos_outages`` (21 reconnections for 3 workers, 2 runs).
- Upstream: kombu ``main`` (read at 9ee8595b) ``kombu/transport/redis.py``: ``_brpop_read``
  re-raises before ``Channel.close`` marks the channel closed.
- Delete when: a kombu release makes ``Channel.close`` finish on a dead BRPOP (the test above
  then passes without this class).
- Other brokers: kombu's ``pyamqp`` transport (RabbitMQ) keeps no ``channels`` on its transport
  and its channels have no ``_in_poll``, so ``finish_interrupted_polls`` does nothing there and
  Celery's own reconnection runs unchanged: ``test_a_worker_running_a_task_reconnects_after_
  rabbitmq_closes_its_connection`` and ``test_rabbitmq_killed_and_restarted_mid_run_...`` cover
  it; the embedded spool's channels have no ``_in_poll`` either.
"""

from __future__ import annotations

import logging
from queue import Empty
from typing import Any

from celery.worker.consumer import Consumer

logger = logging.getLogger(__name__)

#: ``app.conf.worker_consumer`` value naming this class.
CONSUMER_PATH = "tasks.consumer:ReconnectingConsumer"


class ReconnectingConsumer(Consumer):
    """Celery's consumer, finishing interrupted Redis BRPOP reads before it reconnects."""

    def on_connection_error_after_connected(self, exc: Exception) -> None:
        if self.connection is not None:
            finish_interrupted_polls(self.connection)
        super().on_connection_error_after_connected(exc)


def finish_interrupted_polls(connection: Any) -> int:
    """Read (or give up) the outstanding BRPOP reply of every Redis channel of ``connection``;
    the number of channels that had one. Other transports have no such channel: a no-op."""
    transport = getattr(connection, "_transport", None)
    finished = 0
    for channel in list(getattr(transport, "channels", None) or ()):
        if not getattr(channel, "_in_poll", None):
            continue
        finished += 1
        try:
            # Delivers a message the reply carries (it goes to QoS, and so back to Redis on
            # close); ``_brpop_read`` clears ``_in_poll`` whatever happens.
            channel._brpop_read()
        except (Empty, *channel.connection_errors) as error:
            logger.debug("broker connection lost with a BRPOP outstanding: %r", error)
    return finished
