"""Kick the outbox relay from processes that are not workers: the HTTP API and the CLI.

A worker's own commits already ask for a relay (``tasks.runtime.kick_relay``). A transition
made through the API or the CLI used to wait for the relay's periodic sweep (every 5 s) before
its effect (pickup booking, refund, notification) was published. The kick removes that wait.

The kick is only a hint: the rows are committed before it is sent, and the sweep publishes them
whatever happens to it. So it never raises into a request, and it never holds a request on the
broker: a background thread sends it, and a burst of commits while one send is under way
coalesces into one more message.
"""

from __future__ import annotations

import contextlib
import logging
import threading

from celery import Celery
from kombu import Connection

from tasks.runtime import RELAY_TASK

logger = logging.getLogger(__name__)


class RelayKicker:
    """``outbox_written`` for ``CaseService`` in a non-worker process (see the module doc)."""

    def __init__(self, app: Celery) -> None:
        self._app = app
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
