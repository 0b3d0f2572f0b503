"""``entrypoints.processes``: start a child, wait until it is ready, stop it, read its output."""

from __future__ import annotations

import socket
import sys
from pathlib import Path

import pytest

from entrypoints.processes import (
    ChildProcess,
    ProcessExited,
    free_port,
    port_answers,
    stop_all,
    wait_until,
)

#: A child that says it is ready, listens on the port given, and exits 0 on SIGTERM.
_SERVER = """
import signal, socket, sys
signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
server = socket.socket()
server.bind(("127.0.0.1", int(sys.argv[1])))
server.listen()
print("ready.", flush=True)
while True:
    server.accept()[0].close()
"""


def _server(tmp_path: Path, port: int, name: str = "server") -> ChildProcess:
    command = [sys.executable, "-c", _SERVER, str(port)]
    return ChildProcess(command, tmp_path / f"{name}.log")


def test_a_child_is_ready_by_its_log_line_and_its_port_and_stops_on_sigterm(
    tmp_path: Path,
) -> None:
    # given a server started on a free port
    port = free_port()
    server = _server(tmp_path, port).start()
    # when we wait for its log line and its port
    match = server.wait_log(r"^ready\.$", timeout=30)
    server.wait_port(port, timeout=30)
    # then it is up, and a warm shutdown ends it with its own exit code
    assert match[0] == "ready."
    assert server.alive() and port_answers(port)
    server.stop(grace_s=30)
    assert server.stopped_by == "sigterm"
    assert server.returncode == 0
    assert not port_answers(port)


def test_waiting_for_a_child_that_exits_fails_at_once_with_its_output(tmp_path: Path) -> None:
    # given a child that fails before it is ready
    command = [sys.executable, "-c", "print('no database'); raise SystemExit(3)"]
    child = ChildProcess(command, tmp_path / "child.log").start()
    # when we wait for a line it never writes, then we learn it exited, and why
    with pytest.raises(ProcessExited, match="exited with 3") as raised:
        child.wait_log("ready", timeout=60)
    assert "no database" in str(raised.value)


def test_kill_ends_the_child_and_every_process_of_its_group(tmp_path: Path) -> None:
    # given a child that started a grandchild and ignores SIGTERM
    code = (
        "import signal, subprocess, sys, time\n"
        "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
        "grandchild = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(600)'])\n"
        "print(grandchild.pid, flush=True)\n"
        "time.sleep(600)\n"
    )
    child = ChildProcess([sys.executable, "-c", code], tmp_path / "child.log").start()
    grandchild = int(child.wait_log(r"^\d+$", timeout=30)[0])
    # when it is stopped with no grace
    stop_all([child], grace_s=0.1)
    # then SIGKILL ended it, and its grandchild too
    assert child.stopped_by == "sigkill"
    assert not child.alive()
    wait_until(lambda: _gone(grandchild), "the grandchild to end", timeout=30)


def test_free_port_skips_a_port_in_use() -> None:
    # given the first port of a range taken
    first = free_port()
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", first))
        # then the next free one in the range is chosen
        assert free_port(first, first + 50) > first


def _gone(pid: int) -> bool:
    """Ended: no such process, or a zombie waiting to be reaped by whoever adopted it."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return True
    return stat[stat.rindex(")") + 2] == "Z"
