"""The live demo's own deployment: a fresh folder with its database and clock, and one
``aftersales run`` (worker and beat on the embedded broker, and the API on its port) working on
it."""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import sys
from pathlib import Path
from types import FrameType

from config.settings import (
    BrokerSettings,
    DatabaseSettings,
    Settings,
    WorkerSettings,
    sqlite_url,
)
from entrypoints import composition
from entrypoints.demo import START
from entrypoints.processes import ChildProcess, listen_refusal
from workflow.clock import FileClock

#: Beat asks for a sweep every 0.2 s, so a timer fires within a fraction of a second of the clock
#: passing its deadline.
SWEEP_S = 0.2


#: Where the demo's API listens (``make run PORT=...`` moves it).
API_HOST, API_PORT = "127.0.0.1", 8000
#: What uvicorn logs when it cannot listen.
_BIND_FAILED = re.compile(r"error while attempting to bind on address .*")
_PORT_ADVICE = (
    "stop what listens there (another `make run`? `ss -ltnp` names it), or choose another port: "
    "`make run PORT=8001` (`aftersales demo --live --port 8001`)"
)


class DemoFailed(Exception):
    """The live demo could not go on: the worker did not start, or a case did not move."""


def interrupt(signum: int, frame: FrameType | None) -> None:
    """A SIGTERM to the demo unwinds like Ctrl-C, so the worker is stopped on the way out."""
    raise KeyboardInterrupt


def check_api_port(port: int) -> None:
    """Refuse to start when the API's port is taken: the demo's API would be missing, and only
    the worker's log would say so."""
    refusal = listen_refusal(API_HOST, port)
    if refusal is not None:
        raise DemoFailed(f"cannot serve the API on {API_HOST}:{port}: {refusal}; {_PORT_ADVICE}")


def check_api_started(worker_output: str) -> None:
    """``DemoFailed`` if the worker's log says its API could not listen (the port was taken
    after ``check_api_port``)."""
    failed = _BIND_FAILED.search(worker_output)
    if failed is not None:
        raise DemoFailed(f"the API could not start: {failed[0]}; {_PORT_ADVICE}")


def settings_for(folder: Path) -> Settings:
    """Explicit values, not the environment: the embedded broker and the default policy."""
    return Settings(
        database=DatabaseSettings(url=sqlite_url(folder / "aftersales.db")),
        policy_file=None,
        broker=BrokerSettings(url=None, key_prefix="", polling_interval_s=0.05),
        clock_file=folder / "clock",
        worker=WorkerSettings(
            ping_dir=folder / "worker-pings",
            timer_sweep_interval_s=SWEEP_S,
            outbox_relay_interval_s=0.5,
        ),
    )


def start_worker(folder: Path, api_port: int) -> ChildProcess:
    """``aftersales run`` with our environment less any ``AFTERSALES_*``, plus the settings above,
    serving the API on ``127.0.0.1:api_port``. The fakes keep their defaults: they answer at
    once and never fail (the happy paths)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("AFTERSALES_")}
    settings = settings_for(folder)
    env |= {
        "AFTERSALES_DATABASE_URL": settings.database.url,
        "AFTERSALES_CLOCK_FILE": str(folder / "clock"),
        "AFTERSALES_TIMER_SWEEP_INTERVAL_S": str(SWEEP_S),
        "AFTERSALES_OUTBOX_RELAY_INTERVAL_S": str(settings.worker.outbox_relay_interval_s),
        "AFTERSALES_BROKER_POLLING_INTERVAL_S": str(settings.broker.polling_interval_s),
        "PYTHONUNBUFFERED": "1",  # the demo follows events in the log as they are written
    }
    script = Path(sys.executable).with_name("aftersales")
    command = [str(script)] if script.exists() else [sys.executable, "-m", "entrypoints.cli"]
    command += ["run", "--concurrency", "2", "--loglevel", "INFO", "--port", str(api_port)]
    return ChildProcess(command, folder / "worker.log", env=env, die_with_parent=True)


def prepare(folder: Path) -> Path:
    """A fresh folder: the database at the newest schema and the clock at ``START``; refused
    while a killed demo's worker still runs on it."""
    folder = folder.expanduser().resolve()
    with contextlib.suppress(OSError, ValueError):
        pid = int((folder / "worker.pid").read_text())
        with contextlib.suppress(PermissionError):
            os.kill(pid, 0)  # ProcessLookupError (an OSError) when it is gone
        command = b"aftersales"  # unless /proc says the pid was reused by something else
        with contextlib.suppress(OSError):
            command = Path(f"/proc/{pid}/cmdline").read_bytes()
        if b"aftersales" in command or b"entrypoints.cli" in command:
            raise DemoFailed(
                f"a live demo worker (pid {pid}) still runs on {folder}; stop it first (kill {pid})"
            )
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    composition.recreate_embedded_database(settings_for(folder))
    FileClock(str(folder / "clock")).set(START)
    return folder
