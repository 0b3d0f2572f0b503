"""An embedded beat stops when the worker that started it is gone.

``aftersales run`` starts beat as a child process of the worker (``--beat``). A worker killed
with SIGKILL cannot stop that child: the orphan went on sending a timer sweep every second, and
a restarted ``run`` added a second beat beside it (docs/workers.md: one beat per deployment).
Celery sends ``beat_embedded_init`` in that child (``celery.beat.Service.start`` with
``embedded_process``); from there a thread watches the parent and stops the service through
its public ``stop()``: the loop ends after its current sleep and saves its schedule.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from typing import Any

from celery.beat import Service
from celery.signals import beat_embedded_init

#: How often the embedded beat looks whether its worker is still there (s): an orphan sends
#: at most this long of sweeps, which the timers' claim makes harmless.
WATCH_EVERY_S = 1.0

logger = logging.getLogger(__name__)


def stop_when_orphaned(service: Service, every_s: float = WATCH_EVERY_S) -> threading.Thread:
    """Watch this process's parent from a thread; stop ``service`` once it is gone."""
    parent = os.getppid()

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(every_s)  # a period: there is nothing to wait on for a parent's death
        logger.warning("beat: the worker that started it (pid %s) is gone; stopping", parent)
        service.stop()

    thread = threading.Thread(target=watch, name="beat-parent-watch", daemon=True)
    thread.start()
    return thread


@beat_embedded_init.connect
def _on_embedded_beat(sender: Service, **_: Any) -> None:
    stop_when_orphaned(sender)
