"""The worker's broker consumer: Celery's, with a fix that lets it reconnect after Redis went away
while it held a task (``app.conf.worker_consumer``).

The bug (celery 5.7.0 with kombu 5.7.0, the newest releases; reproduced by
``tests/workers/test_faults.py::test_a_worker_running_a_task_reconnects_after_a_redis_restart``):
when the connection to Redis breaks, ``celery.worker.consumer.Consumer.
on_connection_error_after_connected`` runs ``connection.collect()`` and then
``connection.close()``. If the worker had a BRPOP outstanding (a pool slot free) the Redis
channel's ``close()`` (``kombu/transport/redis.py`` ``Channel.close``) first reads that BRPOP's
reply to keep a message it may carry; on a dead socket the read raises ``ConnectionError``, which
leaves ``close()`` before the channel is marked closed. ``collect()`` swallows that error and then
drops ``transport.client``. The second ``close()`` finds the channel still open, goes on to
requeue the unacknowledged messages (the running task, acks_late) through a new Redis client
built from ``transport.client``, now ``None``: ``AttributeError: 'NoneType' object has no
attribute 'hostname'`` in ``Channel._connparams``. ``kombu.common.ignore_errors`` lets only
connection errors pass, so Celery reports an "Unrecoverable error" and shuts the worker (and a
beat inside it) down instead of reconnecting.

The fix: before Celery's cleanup, finish each channel's interrupted BRPOP read ourselves and
drop its connection error (the reply died with the socket; there is nothing left to read). Then
the first ``close()`` runs to its end and marks the channel closed, so the second does nothing.
The unacknowledged messages stay in Redis's ``unacked`` hash (when Redis kept them) and come back
after the visibility timeout, as after any connection loss; the running task goes on (its ack
is lost; ``worker_cancel_long_running_tasks_on_connection_loss`` is off, see ``tasks.app``).

No released kombu or celery changes this path: kombu's ``main`` (read at commit 9ee8595b,
kombu/transport/redis.py) still has ``_brpop_read`` re-raise before ``close()`` marks the channel
closed, and celery 5.7.0 added the ``collect()`` + ``close()`` pair. Remove this module when a
kombu release makes ``Channel.close`` finish on a dead BRPOP.
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
