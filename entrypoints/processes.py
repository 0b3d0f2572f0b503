"""Child processes we supervise: a worker, beat, the API, a private ``redis-server``.

``ChildProcess`` starts a command in a session of its own with its output in a log file, waits
until it is ready (a log line, a port that answers, any condition), stops it (SIGTERM, then
SIGKILL to its whole group) and reads its output. ``free_port`` finds a port nobody holds;
``listen_refusal`` says why a server could not listen on a port, before starting one.
Shared by the live demo, the worker tests and the benchmarks.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import TypeVar

T = TypeVar("T")

#: Upper bound of a stop's wait after SIGKILL (s): the kernel ends a killed process at once.
_REAP_S = 30.0


class ProcessExited(RuntimeError):
    """The process ended while someone waited for it to become ready."""


def free_port(first: int | None = None, last: int | None = None) -> int:
    """A TCP port on 127.0.0.1 nothing listens on (nor holds) now: the first in
    ``first..last`` when a range is given, else one the kernel picks."""
    if first is None:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
            probe.bind(("127.0.0.1", 0))
            return int(probe.getsockname()[1])
    for port in range(first, (last or first) + 1):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
            try:
                probe.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError(f"no free port in {first}..{last}")


def listen_refusal(host: str, port: int) -> str | None:
    """Why a server could not listen on ``host:port`` now ("address already in use",
    "permission denied"), or None when it could. Binds the way uvicorn does (``SO_REUSEADDR``:
    a port whose last connections are closing is free, one with a listener is not)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as error:
            return (error.strerror or str(error)).lower()
    return None


def port_answers(port: int, host: str = "127.0.0.1") -> bool:
    """Whether something accepts TCP connections on ``host:port``."""
    with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=0.5):
        return True
    return False


def wait_until(
    condition: Callable[[], T | None], what: str, timeout: float, every: float = 0.05
) -> T:
    """Poll ``condition`` until it returns something truthy, and return that; ``TimeoutError``
    naming ``what`` past ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(every)


def _die_with_parent() -> None:  # pragma: no cover - runs in the child between fork and exec
    """Linux: have the kernel SIGTERM the child should its parent die without stopping it."""
    with contextlib.suppress(Exception):
        libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
        pr_set_pdeathsig = 1
        libc.prctl(pr_set_pdeathsig, int(signal.SIGTERM), 0, 0, 0)


class ChildProcess:
    """One command run in its own session (a Ctrl-C in our terminal does not reach it), its
    stdout and stderr in ``log``."""

    def __init__(
        self,
        command: list[str],
        log: Path,
        *,
        env: Mapping[str, str] | None = None,
        cwd: Path | None = None,
        die_with_parent: bool = False,
    ) -> None:
        self.command = command
        self.log = log
        self.env = dict(env) if env is not None else None
        self.cwd = cwd
        self.die_with_parent = die_with_parent
        self.process: subprocess.Popen[bytes] | None = None
        #: How the last stop ended it: "sigterm" (it exited within the grace) or "sigkill".
        self.stopped_by: str | None = None

    def start(self) -> ChildProcess:
        """Start the command (again, into a fresh log); returns at once."""
        self.stopped_by = None
        with self.log.open("wb") as out:
            self.process = subprocess.Popen(
                self.command,
                cwd=self.cwd,
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=_die_with_parent
                if self.die_with_parent and sys.platform == "linux"
                else None,
            )
        return self

    @property
    def pid(self) -> int:
        if self.process is None:
            raise RuntimeError(f"{self.log.name}: not started")
        return self.process.pid

    @property
    def returncode(self) -> int | None:
        return None if self.process is None else self.process.poll()

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    # -- readiness -------------------------------------------------------------------------------
    def wait_until(self, condition: Callable[[], T | None], what: str, timeout: float) -> T:
        """``wait_until`` that gives up with ``ProcessExited`` as soon as the process ends."""

        def met() -> T | None:
            value = condition()
            if not value and not self.alive():
                raise ProcessExited(
                    f"{self.log.name}: exited with {self.returncode} while waiting for {what}:\n"
                    + self.tail(20)
                )
            return value

        return wait_until(met, what, timeout)

    def wait_log(self, pattern: str, timeout: float, what: str = "") -> re.Match[str]:
        """Wait for a line of the log matching ``pattern``; the match."""
        regex = re.compile(pattern, re.MULTILINE)
        return self.wait_until(
            lambda: regex.search(self.output()), what or f"/{pattern}/ in {self.log.name}", timeout
        )

    def wait_port(self, port: int, timeout: float, host: str = "127.0.0.1") -> None:
        """Wait until the process (or anyone) accepts connections on ``host:port``."""
        self.wait_until(lambda: port_answers(port, host), f"{host}:{port} to answer", timeout)

    # -- output ----------------------------------------------------------------------------------
    def output(self) -> str:
        """Everything the process wrote so far."""
        try:
            return self.log.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def tail(self, lines: int = 40, skip: Iterable[str] = ()) -> str:
        """The last ``lines`` lines of the output, without those holding any of ``skip``."""
        noise = tuple(skip)
        kept = [line for line in self.output().splitlines() if not any(n in line for n in noise)]
        return "\n".join(kept[-lines:])

    def children(self) -> list[int]:
        """Pids of the process's direct children (a prefork worker's pool), from /proc."""
        if not self.alive():
            return []
        tasks = Path(f"/proc/{self.pid}/task")
        with contextlib.suppress(OSError):
            return sorted(
                {
                    int(child)
                    for task in tasks.iterdir()
                    for child in (task / "children").read_text().split()
                }
            )
        return []

    def wait(self, timeout: float) -> int:
        """Wait for the process to exit by itself; its exit code."""
        if self.process is None:
            raise RuntimeError(f"{self.log.name}: not started")
        return self.process.wait(timeout=timeout)

    # -- stopping --------------------------------------------------------------------------------
    def terminate(self) -> None:
        """SIGTERM (Celery's warm shutdown), without waiting."""
        if self.alive():
            assert self.process is not None
            with contextlib.suppress(ProcessLookupError):
                self.process.send_signal(signal.SIGTERM)

    def stop(self, grace_s: float = 20.0) -> None:
        """SIGTERM, then SIGKILL to the whole group past ``grace_s`` (and to whatever a killed
        parent left behind in it); waits until the process is gone."""
        process = self.process
        if process is None:
            return
        if process.poll() is None:
            self.stopped_by = "sigterm"
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=grace_s)
            except (subprocess.TimeoutExpired, KeyboardInterrupt):
                self.stopped_by = "sigkill"
        self._kill_group()

    def kill(self) -> None:
        """SIGKILL the process and everything it started: nothing gets to clean up."""
        if self.process is not None and self.process.poll() is None:
            self.stopped_by = "sigkill"
        self._kill_group()

    def _kill_group(self) -> None:
        if self.process is None:
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(timeout=_REAP_S)


def stop_all(processes: Iterable[ChildProcess], grace_s: float = 20.0) -> None:
    """Warm shutdown of every process at once, then ``stop`` each in turn."""
    processes = list(processes)
    for process in processes:
        process.terminate()
    for process in processes:
        process.stop(grace_s)


def redis_server_command(port: int, folder: Path, log: Path) -> list[str]:
    """``redis-server`` on 127.0.0.1:``port`` as CI runs it: nothing saved, files in ``folder``."""
    return [
        *("redis-server", "--daemonize", "no", "--bind", "127.0.0.1", "--port", str(port)),
        *("--save", "", "--appendonly", "no", "--dir", str(folder), "--logfile", str(log)),
    ]
