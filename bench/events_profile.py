"""The events benchmark's profiles: py-spy on the pool, samples grouped by area."""

from __future__ import annotations

import collections
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from bench.events_stack import ROOT, Stack


class Sampler:
    """py-spy sampling every pool child: with idle frames (waiting on PostgreSQL is time too),
    or, ``on_cpu``, only what runs on a core (where the CPU goes)."""

    def __init__(
        self, stack: Stack, folder: Path, name: str, rate: int = 200, on_cpu: bool = False
    ) -> None:
        self.files: list[Path] = []
        self.processes = []
        py_spy = Path(sys.executable).with_name("py-spy")
        self.main_files: list[Path] = []
        mains = [worker.pid for worker in stack.workers]
        for pid in [*stack.pool_pids(), *mains]:
            output = folder / f"{name}-{'main' if pid in mains else 'child'}-{pid}.txt"
            (self.main_files if pid in mains else self.files).append(output)
            command = [str(py_spy), "record", "--pid", str(pid), "--rate", str(rate)]
            command += [] if on_cpu else ["--idle"]
            command += ["--format", "raw", "--output", str(output)]
            self.processes.append(
                subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            )
        time.sleep(0.5)  # py-spy attaches; not a synchronisation of the measured work

    def stop(self) -> None:
        for process in self.processes:
            process.send_signal(signal.SIGINT)
        for process in self.processes:
            process.wait(timeout=60)


def sampling(
    stack: Stack, folder: Path, name: str, samplers: list[Sampler], on_cpu: bool
) -> Callable[[], Sampler]:
    """What ``drain`` calls when the workers resume: start sampling (kept in ``samplers``)."""

    def start() -> Sampler:
        samplers.append(Sampler(stack, folder, name, on_cpu=on_cpu))
        return samplers[0]

    return start


def _frame_key(frame: str) -> tuple[str, str]:
    """(function, file:line) of a py-spy raw frame ``function (path:line)``."""
    function, _, where = frame.rpartition(" (")
    where = where.rstrip(")")
    for prefix in (str(ROOT) + "/", "site-packages/"):
        if prefix in where:
            where = where.split(prefix, 1)[1]
    return function, where


#: Where profiled time goes, by the leaf frame's file (first match wins).
_AREAS = (
    ("psycopg/connection.py Connection.wait", "waiting for PostgreSQL (psycopg Connection.wait)"),
    ("psycopg", "psycopg, client side"),
    ("redis/", "Redis client"),
    ("kombu/", "kombu"),
    ("sqlalchemy/", "SQLAlchemy"),
    ("persistence/", "persistence/ (ours)"),
    ("workflow/", "workflow/ (ours)"),
    ("tasks/", "tasks/ (ours)"),
    ("adapters/", "adapters/ (ours: fake gateways)"),
    ("entrypoints/", "entrypoints/ (ours)"),
    ("transitions/", "transitions"),
    ("pydantic", "pydantic"),
    ("json/", "json"),
    ("logging/", "logging"),
    ("celery/", "celery"),
    ("billiard/", "billiard"),
)
_OURS = ("workflow/", "persistence/", "tasks/", "adapters/")
_TRACE = "build_tracer.<locals>.trace_task"


def _area(where: str, function: str) -> str:
    key = f"{where} {function}"
    for needle, name in _AREAS:
        if needle in key:
            return name
    return "stdlib and builtins"


def profile_report(files: Sequence[Path], events: int, rate: int = 200) -> str:
    """Where sampled time goes (wall, or CPU with ``--profile-on-cpu``), in ms per event:
    outside tasks (waiting for one, the pool's and the event loop's own work), per task, per
    area of the leaf frame, and inclusive per function of ours (file:line of the call site)."""
    outside: collections.Counter[str] = collections.Counter()
    tasks: collections.Counter[str] = collections.Counter()
    areas: collections.Counter[str] = collections.Counter()
    leaves: collections.Counter[str] = collections.Counter()
    inclusive: collections.Counter[str] = collections.Counter()
    for path in files:
        if not path.exists():
            continue
        for line in path.read_text(errors="replace").splitlines():
            stack, _, count_text = line.rpartition(" ")
            if not count_text.isdigit():
                continue
            count = int(count_text)
            frames = [_frame_key(f) for f in stack.split(";") if f.strip()]
            entry = next((i for i, (f, _) in enumerate(frames) if f == _TRACE), None)
            if not frames:
                continue
            function, where = frames[-1]
            if entry is None:
                if function in ("_epoll.poll", "Connection._recv", "poll"):
                    outside["idle: waiting for a message or a task"] += count
                else:
                    outside[f"outside tasks: {_area(where, function)}"] += count
                continue
            inside = frames[entry:]
            task = next((f"{w} {f}" for f, w in inside if w.startswith("tasks/")), "celery")
            tasks[task] += count
            areas[_area(where, function)] += count
            leaves[f"{where} {function}"] += count
            for key in {f"{w} {f}" for f, w in inside if w.startswith(_OURS)}:
                inclusive[key] += count
    per = 1e3 / rate / max(events, 1)
    busy = sum(tasks.values())

    def rows(counter: collections.Counter[str], limit: int, of: int) -> list[str]:
        return [
            f"  {n * per:8.2f} ms {n / max(of, 1):6.1%}  {key}"
            for key, n in counter.most_common(limit)
        ]

    total = busy + sum(outside.values())
    lines = [f"{total * per:.2f} ms of samples per event ({len(files)} processes, {rate} Hz):"]
    lines += rows(outside, 10, total)
    lines.append(f"  {busy * per:8.2f} ms {busy / max(total, 1):6.1%}  inside tasks, by task:")
    lines += rows(tasks, 10, busy)
    lines.append("inside tasks, by area of the leaf frame (share of time inside tasks):")
    lines += rows(areas, 20, busy)
    lines.append("inside tasks, leaf frames:")
    lines += rows(leaves, 15, busy)
    lines.append("inside tasks, inclusive, functions of ours:")
    lines += rows(inclusive, 40, busy)
    return "\n".join(lines) + "\n"
