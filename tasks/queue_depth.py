"""How many messages wait in each task queue of the broker, for ``/metrics``.

Asked of the broker itself with a passive queue declaration (kombu's ``queue_declare(passive=
True)``: AMQP's own ``queue.declare`` with ``passive``, which answers the message count without
creating the queue; kombu's Redis transport sums the queue's priority lists, the embedded spool
counts its ready files). So the figure is every producer's and every worker's, whichever process
asks. Messages a worker has fetched and not acknowledged are not counted: they are in its hands.

On Redis the declaration is not passive: kombu 5.7.0's passive check (``Channel._has_queue``)
sends ``EXISTS``, which its ``global_keyprefix`` support does not prefix
(``GlobalKeyPrefixMixin.PREFIXED_SIMPLE_COMMANDS``), so with a key prefix every queue looked
missing. A declaration there writes nothing to Redis (``Channel._new_queue`` only notes expiry
and auto-delete in the channel) and counts with ``LLEN``, which is prefixed. Once kombu prefixes
``EXISTS`` too, Redis may be asked passively like the others; the plain declaration stays
correct either way.
"""

from __future__ import annotations

from collections.abc import Sequence

from kombu.connection import Connection

from config.settings import Settings
from tasks.app import DEFAULT_QUEUE, TIMERS_QUEUE
from tasks.broker import broker_config

#: The queues the workers consume (``tasks.app.celery_config``).
TASK_QUEUES = (DEFAULT_QUEUE, TIMERS_QUEUE)
#: How long a scrape waits for the broker (s): a broker that does not answer must not hold it.
TIMEOUT_S = 2.0


def queue_depths(settings: Settings, queues: Sequence[str] = TASK_QUEUES) -> dict[str, int]:
    """Messages waiting per queue; a queue the broker does not know yet has none. Raises when
    the broker cannot be reached."""
    config = broker_config(settings)
    options = dict(config.transport_options)
    if config.is_redis:
        # Our Redis options set no socket timeout: a hung server would hold the scrape forever.
        options.setdefault("socket_timeout", TIMEOUT_S)
    connection = Connection(
        config.url,
        transport=config.transport,
        transport_options=options,
        connect_timeout=TIMEOUT_S,
    )
    with connection:
        connection.ensure_connection(max_retries=1)
        depths: dict[str, int] = {}
        for queue in queues:
            # A channel each: on AMQP a refused passive declaration closes its channel.
            channel = connection.channel()
            try:
                declared = channel.queue_declare(queue=queue, passive=not config.is_redis)
                depths[queue] = int(declared.message_count)
            except connection.channel_errors:
                # Not declared yet (AMQP), or empty (Redis drops an empty list's key).
                depths[queue] = 0
            finally:
                _close(channel, connection)
        return depths


def _close(channel: object, connection: Connection) -> None:
    try:
        channel.close()  # type: ignore[attr-defined]
    except connection.channel_errors + connection.connection_errors:
        pass
