"""``aftersales demo --live`` (``make run``) as a user runs it: a real worker in a child process.

The demo is started as a subprocess in a fresh directory, like a first ``make run`` on a clone.
It must end by itself, leave every sample case in its final state in the database it kept, and
leave no process of its worker behind.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from adapters.fake_gateways import build_fake_gateways
from config.settings import DatabaseSettings, FakeGatewaySettings, Settings, sqlite_url
from entrypoints import composition
from entrypoints.demo import START
from entrypoints.processes import free_port
from workflow.clock import FakeClock
from workflow.model import RefundRoute

from .support import CliFn

#: The demo takes a few seconds off a terminal; this only bounds a hung run.
TIMEOUT_S = 120
#: The issue's budget for the whole run.
BUDGET_S = 60

#: (type, final state, refund in fen) of each sample, in the demo's order.
EXPECTED: list[tuple[str, str, int | None]] = [
    ("return_refund", "refunded", 19_400),  # ¥199 jacket less the missing ¥5 scarf
    ("exchange", "exchanged", None),
    ("repair", "repaired", None),
    ("refund_only", "refunded", 45_800),  # by bank transfer: past WeChat Pay's 365 days
    ("return_refund", "closed", None),  # nobody acts: auto-approved, then the return window
    ("return_refund", "refused", None),  # no-reason return on day 9: no case
]


def _command() -> list[str]:
    script = Path(sys.executable).with_name("aftersales")
    return [str(script)] if script.exists() else [sys.executable, "-m", "entrypoints.cli"]


def _group_members(pgid: int) -> list[int]:
    """Live (non-zombie) processes of the process group ``pgid``."""
    members = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            stat = (entry / "stat").read_text()
            # pid (comm) state ppid pgrp ...; comm may hold spaces, so split after its ")".
            fields = stat[stat.rindex(")") + 2 :].split()
            if int(fields[2]) == pgid and fields[0] != "Z":
                members.append(int(entry.name))
    return members


def _processes_using(folder: Path) -> list[int]:
    """Processes whose environment points into ``folder`` (the worker's clock and database)."""
    marker = str(folder).encode()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        with contextlib.suppress(OSError):
            if marker in (entry / "environ").read_bytes():
                found.append(int(entry.name))
    return found


def _kill_leftover_worker(folder: Path) -> None:
    """Safety net for a failed run: never leave a worker running after the test."""
    with contextlib.suppress(OSError, ValueError):
        pid = int((folder / "worker.pid").read_text())
        os.killpg(pid, signal.SIGKILL)


def _run_live_demo(cwd: Path, port: int) -> tuple[subprocess.CompletedProcess[str], float]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AFTERSALES_")}
    env.update({"NO_COLOR": "1", "TERM": "dumb"})
    started = time.monotonic()
    process = subprocess.Popen(
        # A port of its own: 8000 may be taken by a developer's `make run` or another test.
        [*_command(), "demo", "--live", "--json", "--port", str(port)],
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        stdout, stderr = process.communicate(timeout=TIMEOUT_S)
    except subprocess.TimeoutExpired:
        # SIGTERM, not SIGKILL: the demo stops its worker on the way out.
        process.send_signal(signal.SIGTERM)
        stdout, stderr = process.communicate(timeout=60)
        pytest.fail(f"the live demo did not end within {TIMEOUT_S} s:\n{stderr[-5000:]}")
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        _kill_leftover_worker(cwd / "var" / "demo-live")
    done = subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr)
    return done, time.monotonic() - started


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads processes from /proc")
def test_live_demo_moves_every_sample_case_through_the_running_service(tmp_path: Path) -> None:
    # when the live demo runs in a fresh directory
    port = free_port()
    done, elapsed = _run_live_demo(tmp_path, port)

    # then it ends well, within the budget
    assert done.returncode == 0, done.stderr[-5000:]
    assert elapsed < BUDGET_S, f"took {elapsed:.0f} s"
    result: dict[str, Any] = json.loads(done.stdout)
    assert result["api"] == f"http://127.0.0.1:{port}"  # it answered /healthz during the run
    outcomes = result["outcomes"]
    assert [(o["type"], o["final_state"], o["refund_amount"]) for o in outcomes] == EXPECTED
    assert outcomes[-1]["case_id"] is None
    assert outcomes[-1]["note"] == "rule no_reason_window"

    # and every event went through the worker: each applied, the repeated one recognised
    events = result["events"]
    statuses = [event["status"] for event in events]
    assert statuses.count("duplicate") == 1
    assert statuses.count("applied") == len(events) - 1
    repeated = next(e["event_id"] for e in events if e["status"] == "duplicate")
    assert sorted(e["status"] for e in events if e["event_id"] == repeated) == [
        "applied",
        "duplicate",
    ]

    # and the database it left behind agrees
    folder = tmp_path / "var" / "demo-live"
    settings = Settings(
        database=DatabaseSettings(url=sqlite_url(folder / "aftersales.db")), policy_file=None
    )
    service = composition.build_service(settings, FakeClock(START))
    cases = {o["case_id"]: o for o in outcomes if o["case_id"] is not None}
    assert len(cases) == 5
    for case_id, outcome in cases.items():
        case = service.get(case_id).case
        assert case.state.value == outcome["final_state"], case_id
        assert case.is_terminal
    triggers = {case_id: [r.trigger for r in service.history(case_id)] for case_id in cases}
    jacket, phone, headphones, preorder, idle = sorted(cases)
    # the duplicate delivery moved the case once; the worker booked pickups and paid refunds
    assert triggers[jacket].count("record_return_delivery") == 1
    assert "book_pickup" in triggers[jacket]
    assert triggers[jacket][-1] == "confirm_refund"
    assert triggers[phone][-1] == "confirm_delivery"
    # the timers fired on the shared clock
    assert triggers[headphones][-1] == "auto_confirm_delivery"
    assert "auto_approve" in triggers[idle]
    assert triggers[idle][-1] == "expire_return"
    assert "provide_bank_account" in triggers[preorder]
    assert service.get(preorder).case.refund_route is RefundRoute.BANK_TRANSFER
    payments = build_fake_gateways(
        FakeGatewaySettings(ledger_url=None), settings.database.url
    ).payments
    for refunded in (jacket, preorder):
        assert payments.payments_count(refunded) == 1
        assert payments.amount_paid(refunded) == cases[refunded]["refund_amount"]

    # and its worker was stopped cleanly, leaving no process behind
    worker = result["worker"]
    assert worker["stopped_by"] == "sigterm"
    assert worker["exit_code"] == 0
    assert not (folder / "worker.pid").exists()
    deadline = time.monotonic() + 10
    while _group_members(worker["pid"]) and time.monotonic() < deadline:
        time.sleep(0.1)  # an orphaned child may still be waiting to be reaped
    assert _group_members(worker["pid"]) == []
    assert _processes_using(folder) == []


def test_live_demo_refuses_the_scripted_demos_database_option(invoke: CliFn) -> None:
    result = invoke("demo", "--live", "--db", "other.db")
    assert result.code == 2
    assert "--db is for the scripted demo" in result.stderr
