"""Kick the outbox relay after a commit that wrote outbox rows: workers, the HTTP API, the CLI.

Without a kick a transition's effect (pickup booking, refund, notification) waits for the
relay's periodic sweep (every 5 s) before it is published.

The kick is only a hint: the rows are committed before it is sent, and the sweep publishes them
whatever happens to it. So it never raises into a request or a task, and never holds one on the
broker: a background thread sends it, and the commits made while one send is under way (and,
with ``min_interval_s``, for that long after it) coalesce into one more message. A relay
publishes every pending row, so one kick serves them all: in a worker applying hundreds of
events a second, a kick per commit cost as much as the event (docs/adr/0009).
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable

from celery import Celery
from kombu import Connection

#: The relay task's name (``tasks.outbox``).
RELAY_TASK = "aftersales.relay_outbox"

logger = logging.getLogger(__name__)


class RelayKicker:
    """``outbox_written`` for ``CaseService`` (see the module doc). At most one kick leaves per
    ``min_interval_s``; the first after a quiet spell leaves at once."""

    def __init__(
        self,
        app: Celery,
        min_interval_s: float = 0.0,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self._app = app
        self._min_interval_s = min_interval_s
        self._sleep = sleep
        self._wanted = threading.Event()
        self._idle = threading.Event()
        self._idle.set()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        # Used by the kick thread only.
        self._connection: Connection | None = None
        self.sent = 0
        self.failed = 0

    def __call__(self) -> None:
        with self._lock:
            self._idle.clear()
            self._wanted.set()
            if self._thread is None:
                # Daemon: a process exiting does not wait on an unreachable broker.
                self._thread = threading.Thread(target=self._run, name="relay-kick", daemon=True)
                self._thread.start()

    def flush(self, timeout: float) -> bool:
        """Wait until every kick asked for so far was sent or failed (a CLI before exiting)."""
        return self._idle.wait(timeout)

    def _run(self) -> None:
        while True:
            self._wanted.wait()
            self._wanted.clear()
            self._send()
            if self._min_interval_s > 0:
                # Not a synchronisation: a rate limit. Commits meanwhile share the next kick.
                self._sleep(self._min_interval_s)
            with self._lock:
                if not self._wanted.is_set():
                    self._idle.set()

    def _send(self) -> None:
        try:
            if self._connection is None:
                self._connection = self._app.connection_for_write()
            # One connection attempt and no publish retries (kombu's defaults retry for
            # minutes): a broker that is down now is the sweep's business, and a retrying
            # kick would only delay the kicks that follow.
            self._connection.ensure_connection(max_retries=0)
            self._app.send_task(RELAY_TASK, connection=self._connection, retry=False)
            self.sent += 1
        except Exception as exc:  # any broker failure leaves the rows to the sweep
            self.failed += 1
            self._drop_connection()
            logger.warning("outbox relay not kicked (the relay sweep will publish): %s", exc)

    def _drop_connection(self) -> None:
        connection, self._connection = self._connection, None
        if connection is not None:
            with contextlib.suppress(Exception):
                connection.release()
