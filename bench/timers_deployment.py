"""The timers benchmark's deployment: ``aftersales worker`` and ``aftersales beat`` as child
processes on the run's database, broker and clock file, and what the worker's log says it ran.
"""

from __future__ import annotations

import contextlib
import os
import re
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from config.settings import BrokerSettings, DatabaseSettings, Settings, WorkerSettings
from entrypoints.processes import ChildProcess
from tasks.app import create_app
from workflow.clock import FileClock

ROOT = Path(__file__).resolve().parents[1]
#: Celery's line for a task that returned (worker log at INFO).
_TASK_DONE = re.compile(
    r"Task (aftersales\.\w+)\[[0-9a-f-]+\] (?:succeeded|raised[^\n]*?) in ([\d.e-]+)s"
)
#: Celery's line for a message dropped unrun because its ``expires`` passed while it queued.
_EXPIRED = re.compile(r"Discarding revoked task: (aftersales\.\w+)\[")


@dataclass
class Deployment:
    worker: ChildProcess
    beat: ChildProcess
    clock: FileClock
    app: Any
    ping_dir: Path
    concurrency: int

    def wait_ready(self, timeout_s: float = 120.0) -> None:
        """Until the worker has run a ping (its pool is up and consuming)."""
        token = uuid.uuid4().hex
        self.app.send_task("aftersales.ping", args=[token])
        deadline = time.monotonic() + timeout_s
        while not (self.ping_dir / token).exists():
            for process in (self.worker, self.beat):
                if not process.alive():
                    raise RuntimeError(f"{process.log.stem} exited; see {process.log}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"the worker did not run a ping within {timeout_s:.0f} s")
            time.sleep(0.1)

    def log_offset(self) -> int:
        return self.worker.log.stat().st_size

    def work_since(self, offset: int) -> WorkerWork:
        """What the worker ran (and dropped) since ``offset`` in its log: Celery logs each task's
        run time at INFO, and each expired message it discards."""
        with self.worker.log.open("rb") as handle:
            handle.seek(offset)
            text = handle.read().decode(errors="replace")
        work = WorkerWork()
        for name, seconds in _TASK_DONE.findall(text):
            work.runs.setdefault(name, []).append(float(seconds))
        for name in _EXPIRED.findall(text):
            work.expired[name] = work.expired.get(name, 0) + 1
        return work


@dataclass
class WorkerWork:
    """Task run times by task name, and expired messages dropped, in one phase."""

    runs: dict[str, list[float]] = field(default_factory=dict)
    expired: dict[str, int] = field(default_factory=dict)

    def busy_s(self) -> float:
        return sum(sum(times) for times in self.runs.values())

    def describe(self, wall_s: float, concurrency: int) -> str:
        """Per task: runs, seconds in all and share of the pool's time."""
        capacity = wall_s * concurrency
        parts = [
            f"{name.removeprefix('aftersales.')} {len(times):,}× {sum(times):.0f} s "
            f"({sum(times) / capacity:.0%})"
            for name, times in sorted(self.runs.items(), key=lambda item: -sum(item[1]))
        ]
        parts += [
            f"{count:,} {name.removeprefix('aftersales.')} expired unrun"
            for name, count in self.expired.items()
        ]
        return "; ".join(parts)


@contextlib.contextmanager
def deployment(
    database_url: str, redis_url: str, folder: Path, concurrency: int
) -> Iterator[Deployment]:
    """``aftersales worker -c N`` and ``aftersales beat`` (production commands and defaults;
    prefork on Redis) on the run's database, broker and clock file; stopped afterwards."""
    folder.mkdir(parents=True, exist_ok=True)
    clock_file = folder / "clock"
    clock_file.write_text("")  # empty: the system time, until the burst moves it
    ping_dir = folder / "pings"
    env = {key: value for key, value in os.environ.items() if not key.startswith("AFTERSALES_")}
    env.update(
        {
            "AFTERSALES_DATABASE_URL": database_url,
            "AFTERSALES_BROKER_URL": redis_url,
            "AFTERSALES_CLOCK_FILE": str(clock_file),
            "AFTERSALES_PING_DIR": str(ping_dir),
        }
    )
    aftersales = str(Path(sys.executable).with_name("aftersales"))
    settings = Settings(
        database=DatabaseSettings(url=database_url),
        broker=BrokerSettings(url=redis_url),
        worker=WorkerSettings(ping_dir=ping_dir),
        clock_file=clock_file,
    )
    app = create_app(settings)
    processes: list[ChildProcess] = []

    def start(name: str, *arguments: str) -> ChildProcess:
        # cwd: beat's schedule file goes to ./var here
        process = ChildProcess(
            [aftersales, *arguments], folder / f"{name}.log", env=env, cwd=folder
        )
        processes.append(process.start())
        return process

    try:
        worker = start("worker", "worker", "--concurrency", str(concurrency))
        beat = start("beat", "beat")
        yield Deployment(worker, beat, FileClock(str(clock_file)), app, ping_dir, concurrency)
    finally:
        for process in processes:
            process.stop(grace_s=30)
        app.close()
