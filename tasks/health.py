"""Tasks that prove a worker runs, and measure the broker: no service call behind them."""

from __future__ import annotations

import json
import os
import re
import socket
import time
from pathlib import Path

from celery import Task, shared_task

#: The ``app.conf`` key holding the folder ``ping_task`` writes to (set by ``create_app``).
PING_DIR_KEY = "aftersales_ping_dir"

# The token becomes a file name: no separators, no dots, nothing a message could use to escape.
_TOKEN = re.compile(r"\A[A-Za-z0-9_-]{1,64}\Z")


@shared_task(name="aftersales.ping", bind=True)
def ping_task(self: Task, token: str) -> None:
    """Leave ``<ping dir>/<token>`` (JSON: pid, host, time) as proof that a worker ran."""
    if not _TOKEN.match(token):
        raise ValueError(f"ping token must match {_TOKEN.pattern}: {token!r}")
    folder = Path(self.app.conf[PING_DIR_KEY])
    folder.mkdir(parents=True, exist_ok=True)
    proof = {"pid": os.getpid(), "host": socket.gethostname(), "at": time.time()}
    staged = folder / f".{token}.tmp"
    staged.write_text(json.dumps(proof))
    # Readers polling for the file never see it half-written.
    os.replace(staged, folder / token)


@shared_task(name="aftersales.noop", bind=True)
def noop_task(self: Task) -> None:
    """Does nothing: what remains of its cost is the broker's and the worker's."""
