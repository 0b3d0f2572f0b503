"""The machine's resources around worker processes: load average, resident memory sampled in
a thread, and a private ``redis-server`` for a run.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from entrypoints.processes import ChildProcess, free_port, redis_server_command


def load_average() -> str:
    """``uptime``'s three load averages, printed beside every figure."""
    one, five, fifteen = os.getloadavg()
    return f"load {one:.2f} {five:.2f} {fifteen:.2f}"


def rss_kib(pid: int) -> int | None:
    """Resident set size of ``pid`` (``VmRSS`` in /proc/<pid>/status), None once it is gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except (FileNotFoundError, ProcessLookupError):
        return None
    return None  # a zombie has no VmRSS line


def child_pids(pid: int) -> list[int]:
    """The direct children of ``pid`` (prefork pool processes of a Celery worker)."""
    children: list[int] = []
    try:
        for task in Path(f"/proc/{pid}/task").iterdir():
            text = (task / "children").read_text()
            children.extend(int(child) for child in text.split())
    except (FileNotFoundError, ProcessLookupError):
        return []
    return sorted(set(children))


@contextmanager
def private_redis(folder: Path, deadline_s: float = 20.0) -> Iterator[str]:
    """A ``redis-server`` of this run only (no persistence), on a free port; its URL.

    Workers on the shared Redis would take other people's tasks, and theirs ours."""
    folder.mkdir(parents=True, exist_ok=True)
    port = free_port()
    command = redis_server_command(port, folder, folder / "redis.log")
    server = ChildProcess(command, folder / "redis.out").start()
    try:
        server.wait_port(port, deadline_s)
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        server.stop(grace_s=10)


@dataclass
class Memory:
    """Resident memory of one role (a process, or the largest of a worker's pool children)."""

    first_kib: int = 0
    max_kib: int = 0
    last_kib: int = 0
    #: The largest reading in each phase the sampler was told about.
    by_phase: dict[str, int] = field(default_factory=dict)

    def add(self, kib: int, phase: str) -> None:
        if not self.first_kib:
            self.first_kib = kib
        self.max_kib = max(self.max_kib, kib)
        self.last_kib = kib
        self.by_phase[phase] = max(self.by_phase.get(phase, 0), kib)


class RssSampler:
    """Samples ``VmRSS`` of named processes (and of each one's children) in a thread.

    ``roles`` maps a role to a pid; the children of a pid are sampled as ``<role> child`` (the
    largest child at each sample), which is where a prefork worker runs its tasks.
    """

    def __init__(self, roles: dict[str, int], every_s: float = 0.5) -> None:
        self.roles = dict(roles)
        self.memory: dict[str, Memory] = {}
        self.phase = "start"
        self._every = every_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()

    def sample(self) -> None:
        for role, pid in self.roles.items():
            own = rss_kib(pid)
            if own is not None:
                self.memory.setdefault(role, Memory()).add(own, self.phase)
            children = [kib for kib in map(rss_kib, child_pids(pid)) if kib is not None]
            if children:
                self.memory.setdefault(f"{role} child", Memory()).add(max(children), self.phase)

    def _run(self) -> None:
        while not self._stop.wait(self._every):
            self.sample()
