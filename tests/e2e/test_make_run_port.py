"""``make run`` (``aftersales demo --live``) and the API's port: a taken port stops it before
anything starts, with one line saying which port and what to do."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from entrypoints.processes import free_port

REPOSITORY = Path(__file__).resolve().parents[2]


@pytest.fixture
def held_port() -> Iterator[int]:
    """A port on 127.0.0.1 that another server listens on for the whole test."""
    port = free_port()
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as holder:
        holder.bind(("127.0.0.1", port))
        holder.listen()
        yield port


def live_demo(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    script = Path(sys.executable).with_name("aftersales")
    command = [str(script)] if script.exists() else [sys.executable, "-m", "entrypoints.cli"]
    env = {k: v for k, v in os.environ.items() if not k.startswith("AFTERSALES_")}
    return subprocess.run(
        [*command, "demo", "--live", *args],
        cwd=cwd,
        env=env | {"NO_COLOR": "1", "TERM": "dumb"},
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_a_taken_port_stops_the_demo_with_one_line(tmp_path: Path, held_port: int) -> None:
    # given a previous run's folder, which a refused run must leave alone
    previous = tmp_path / "var" / "demo-live" / "worker.log"
    previous.parent.mkdir(parents=True)
    previous.write_text("the last run's log\n")

    # when
    done = live_demo(tmp_path, "--port", str(held_port))

    # then it says which port, why, and what to do; exit 1; nothing started or deleted
    assert done.returncode == 1, (done.stdout, done.stderr)
    assert done.stdout == ""
    assert done.stderr.splitlines() == [
        f"error: cannot serve the API on 127.0.0.1:{held_port}: address already in use; stop "
        "what listens there (another `make run`? `ss -ltnp` names it), or choose another port: "
        "`make run PORT=8001` (`aftersales demo --live --port 8001`)"
    ]
    assert previous.read_text() == "the last run's log\n"
    assert sorted(path.name for path in previous.parent.iterdir()) == ["worker.log"]


def test_a_taken_port_in_json(tmp_path: Path, held_port: int) -> None:
    done = live_demo(tmp_path, "--port", str(held_port), "--json")

    assert done.returncode == 1
    error = json.loads(done.stderr)["error"]
    assert error["code"] == "demo_failed"
    assert f"127.0.0.1:{held_port}: address already in use" in error["message"]


def test_make_run_passes_its_port_to_the_demo() -> None:
    # when make only prints what `make run PORT=...` would run
    done = subprocess.run(
        ["make", "--no-print-directory", "-n", "run", "PORT=8123"],
        cwd=REPOSITORY,
        capture_output=True,
        text=True,
        timeout=60,
    )

    # then
    assert done.returncode == 0, done.stderr
    assert "aftersales demo --live --port 8123" in done.stdout
