"""The embedded broker: kombu's ``filesystem://`` transport with acknowledgements.

A message is written under ``tmp/`` and renamed into ``ready/``; fetching renames it into
``claimed/`` (one process wins) and only an ack deletes it; a claim of a dead process, or older
than ``visibility_timeout``, goes back to ``ready/``. File names and format stay kombu's, so a
stock ``filesystem://`` producer still works. Folders under ``data_folder``: ``ready/``,
``claimed/``, ``tmp/``, ``dead/`` (unreadable messages), ``control/`` (exchange bindings).

The fence around kombu's virtual-transport internals (docs/adr/0002):

- Relies on: ``kombu.transport.filesystem.Channel``/``Transport`` subclassed, overriding
  ``_get``, ``_put``, ``_restore``, ``_purge``, ``_size``, ``basic_ack``, ``basic_reject``,
  ``basic_consume``; ``transport_options``; ``virtual.BrokerState``; the payload's
  ``properties.delivery_tag``; kombu's ``QoS`` calling ``Channel._restore`` on requeue, warm
  shutdown and a dead prefork child. Checked by ``tests/unit/test_library_fences.py``.
- Measured (docs/workers.md, celery 5.7.0 / kombu 5.7.0): ``kill -9`` of a worker with 200
  tasks in flight lost 2 with the stock transport and 0 with this one; 500 tasks in 25.6 s
  against the stock 26.5 s.
- Upstream: kombu 5.7.0 ``kombu/transport/filesystem.py`` ``Channel._get`` deletes the file on
  fetch, and ``virtual/base.py`` ``QoS.ack`` writes nothing back, so the unacked copy lives only
  in the worker's memory.
- Delete when: kombu's filesystem transport keeps a message until it is acknowledged, or the
  embedded broker is dropped for Redis everywhere.
"""

from __future__ import annotations

import logging
import os
import threading
import time
import uuid
from pathlib import Path
from queue import Empty
from typing import Any

from kombu.transport import filesystem, virtual
from kombu.utils.encoding import bytes_to_str, str_to_bytes
from kombu.utils.json import dumps, loads

logger = logging.getLogger(__name__)

#: Separates claim time (ns), claiming pid and original file name in ``claimed/``.
CLAIM_SEPARATOR = "~"


class Channel(filesystem.Channel):
    """One consumer's view of the spool; claims are tracked per channel by delivery tag."""

    def __init__(self, connection: Any, **kwargs: Any) -> None:
        super().__init__(connection, **kwargs)
        options = self.transport_options
        root = Path(options["data_folder"])
        self._ready = root / "ready"
        self._claimed = root / "claimed"
        self._tmp = root / "tmp"
        self._dead = root / "dead"
        self._control = root / "control"
        for folder in (self._ready, self._claimed, self._tmp, self._dead, self._control):
            folder.mkdir(parents=True, exist_ok=True)
        self._visibility_timeout_ns = int(float(options.get("visibility_timeout", 3600)) * 1e9)
        # Look for abandoned claims every 10 s (a short listing), more often for short timeouts.
        self._restore_every_ns = min(max(self._visibility_timeout_ns // 10, 10**9), 10 * 10**9)
        self._next_restore_ns = 0
        self._claims: dict[str, Path] = {}
        # Acks may come from pool threads while the consuming thread claims new messages.
        self._claims_lock = threading.Lock()
        self._no_ack_queues: set[str] = set()

    @property
    def control_folder(self) -> Path:
        return self._control

    def basic_consume(
        self, queue: str, no_ack: bool, callback: Any, consumer_tag: str, **kwargs: Any
    ) -> Any:
        if no_ack:
            # Nobody will ack these (remote-control broadcasts, replies): delete on fetch.
            self._no_ack_queues.add(queue)
        return super().basic_consume(queue, no_ack, callback, consumer_tag, **kwargs)

    def basic_ack(self, delivery_tag: str, multiple: bool = False) -> None:
        claim = self._release(delivery_tag)
        super().basic_ack(delivery_tag, multiple)
        _unlink(claim)

    def basic_reject(self, delivery_tag: str, requeue: bool = False) -> None:
        # With requeue, kombu puts a fresh copy back through ``_restore`` before we drop ours.
        claim = self._release(delivery_tag)
        super().basic_reject(delivery_tag, requeue)
        _unlink(claim)

    def _restore(self, message: Any) -> None:
        # Reached on reject(requeue), on warm shutdown and when a prefork child dies.
        claim = self._release(message.delivery_tag)
        super()._restore(message)
        _unlink(claim)

    # kombu names the second parameter ``message`` in the base class and ``payload`` in the
    # filesystem one; callers pass it by position.
    def _put(self, queue: str, payload: Any, **kwargs: Any) -> None:  # type: ignore[override]
        name = f"{time.time_ns():020d}_{uuid.uuid4().hex}.{queue}.msg"
        staged = self._tmp / name
        staged.write_bytes(str_to_bytes(dumps(payload)))
        os.replace(staged, self._ready / name)

    def _get(self, queue: str, timeout: Any = None) -> Any:
        self._maybe_restore_expired()
        wanted = f"{queue}.msg"
        for name in sorted(os.listdir(self._ready)):
            if name.partition(".")[2] != wanted:
                continue
            claim = self._claimed / CLAIM_SEPARATOR.join(
                (f"{time.time_ns():020d}", str(os.getpid()), name)
            )
            try:
                os.rename(self._ready / name, claim)
            except FileNotFoundError:
                continue  # another consumer claimed it first
            try:
                payload = loads(bytes_to_str(claim.read_bytes()))
                delivery_tag = payload["properties"]["delivery_tag"]
            except (ValueError, KeyError, TypeError):
                logger.error("unreadable message %s moved to %s", name, self._dead)
                os.replace(claim, self._dead / name)
                continue
            if queue in self._no_ack_queues:
                _unlink(claim)
            else:
                with self._claims_lock:
                    self._claims[delivery_tag] = claim
            return payload
        raise Empty()

    def _purge(self, queue: str) -> int:
        wanted = f"{queue}.msg"
        count = 0
        for name in os.listdir(self._ready):
            if name.partition(".")[2] == wanted:
                try:
                    (self._ready / name).unlink()
                except FileNotFoundError:
                    continue
                count += 1
        return count

    def _size(self, queue: str) -> int:
        wanted = f"{queue}.msg"
        return sum(1 for name in os.listdir(self._ready) if name.partition(".")[2] == wanted)

    def _release(self, delivery_tag: str) -> Path | None:
        with self._claims_lock:
            return self._claims.pop(delivery_tag, None)

    def _maybe_restore_expired(self) -> None:
        # The first poll of a starting worker restores what a killed predecessor held.
        now = time.time_ns()
        if now < self._next_restore_ns:
            return
        self._next_restore_ns = now + self._restore_every_ns
        restore_expired_claims(self._claimed, self._ready, self._visibility_timeout_ns, now)


def restore_expired_claims(claimed: Path, ready: Path, timeout_ns: int, now_ns: int) -> int:
    """Move claims of dead processes, or older than ``timeout_ns``, back to ``ready/``.

    Returns how many were moved.
    """
    moved = 0
    for entry in os.listdir(claimed):
        parts = entry.split(CLAIM_SEPARATOR, 2)
        if len(parts) != 3 or not parts[0].isdigit() or not parts[1].isdigit():
            continue
        stamp, pid, name = int(parts[0]), int(parts[1]), parts[2]
        if now_ns - stamp < timeout_ns and _alive(pid):
            continue
        try:
            os.rename(claimed / entry, ready / name)
        except FileNotFoundError:
            continue  # acked, or restored by another worker, meanwhile
        moved += 1
    if moved:
        logger.warning("restored %d message(s) left unacknowledged by a dead or slow worker", moved)
    return moved


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's process: alive
    return True


def _unlink(path: Path | None) -> None:
    if path is not None:
        path.unlink(missing_ok=True)


class Transport(filesystem.Transport):
    """``data_folder`` (required), ``visibility_timeout`` (s), ``polling_interval`` (s)."""

    Channel = Channel
    # Exchange declarations are per process; the bindings themselves live in ``control/``.
    global_state = virtual.BrokerState()
    driver_name = "aftersales-spool"

    @property
    def default_connection_params(self) -> dict[str, Any]:
        # A folder, not a host: without this kombu warns "No hostname was supplied" on connect.
        return {"port": self.default_port, "hostname": ""}
