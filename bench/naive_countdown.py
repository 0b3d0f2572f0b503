"""The naive way to keep timers: one Celery task per deadline, ``apply_async(countdown=...)``.

Benchmark 3's comparison: for each visibility timeout given, a prefork worker on a private Redis
receives ``--tasks`` countdown tasks of a trivial probe (``bench.countdown_probe``) and runs them
when due. Measured: the worker's resident memory (an ETA task waits in the worker's memory) and
runs per task id. Redis hands an unacknowledged message older than the visibility timeout out
again (kombu ``QoS.restore_visible``), so a countdown longer than it runs twice or more.

    python -m bench.naive_countdown --tasks 50000 --visibility 3600 --visibility 30
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

import redis
from celery import Celery
from rich.progress import Progress
from rich.table import Table

from bench import resources, support
from bench.countdown_probe import COUNTER_URL_ENV, NAME
from config.settings import BrokerSettings, DatabaseSettings, Settings, WorkerSettings
from entrypoints.processes import ChildProcess
from entrypoints.worker import worker_argv
from tasks.app import create_app

ROOT = Path(__file__).resolve().parents[1]
#: The production visibility timeout (``BrokerSettings``' default).
PRODUCTION_VISIBILITY_S = BrokerSettings().visibility_timeout_s


@dataclass
class NaiveResult:
    visibility_s: int
    tasks: int
    concurrency: int
    countdown_s: tuple[float, float]
    #: Worker main process, KiB: before sending, once every task was received, at most, at the end.
    rss_before_kib: int
    #: At the moment the worker held the most messages (``peak_held``).
    rss_pending_kib: int
    peak_held: int
    rss_max_kib: int
    rss_final_kib: int
    #: Largest pool child, KiB, at most.
    child_max_kib: int
    #: Seconds from the first send until the worker had taken every message off the queue.
    received_after_s: float
    executed_ids: int
    executions: int
    #: Seconds from the first send until every task id had run at least once (None: not all ran).
    all_ran_after_s: float | None
    load: str

    @property
    def duplicates(self) -> int:
        return self.executions - self.executed_ids

    @property
    def kib_per_pending_task(self) -> float:
        return (self.rss_pending_kib - self.rss_before_kib) / max(self.peak_held, 1)

    @property
    def label(self) -> str:
        which = "production" if self.visibility_s == PRODUCTION_VISIBILITY_S else "short"
        return f"visibility {self.visibility_s} s ({which})"


class NaiveWorker:
    """A prefork worker on its own key prefix of the private Redis, with the probe loaded."""

    def __init__(self, redis_url: str, folder: Path, visibility_s: int, concurrency: int) -> None:
        self.visibility_s = visibility_s
        self.prefix = f"naive-{visibility_s}-{uuid.uuid4().hex[:6]}:"
        self.counter_key = f"{self.prefix}executions"
        self.folder = folder / f"naive-{visibility_s}"
        self.folder.mkdir(parents=True, exist_ok=True)
        # A short visibility timeout needs the time limit and retry cap below it (Settings checks).
        limit = min(600, max(1, visibility_s // 3))
        worker_settings = WorkerSettings(
            task_time_limit_s=limit,
            retry_backoff_max_s=limit,
            ping_dir=self.folder / "pings",
        )
        # The probe needs no database; the URL only places the worker's var/ folder.
        settings = Settings(
            database=DatabaseSettings(url=f"sqlite:///{self.folder / 'var' / 'unused.db'}"),
            broker=BrokerSettings(
                url=redis_url, visibility_timeout_s=visibility_s, key_prefix=self.prefix
            ),
            worker=worker_settings,
        )
        self.app: Celery = create_app(settings)
        env = {k: v for k, v in os.environ.items() if not k.startswith("AFTERSALES_")}
        env.update(
            {
                "AFTERSALES_DATABASE_URL": settings.database.url,
                "AFTERSALES_BROKER_URL": redis_url,
                "AFTERSALES_BROKER_KEY_PREFIX": self.prefix,
                "AFTERSALES_BROKER_VISIBILITY_TIMEOUT_S": str(visibility_s),
                "AFTERSALES_TASK_TIME_LIMIT_S": str(worker_settings.task_time_limit_s),
                "AFTERSALES_RETRY_BACKOFF_MAX_S": str(worker_settings.retry_backoff_max_s),
                "AFTERSALES_PING_DIR": str(worker_settings.ping_dir),
                COUNTER_URL_ENV: redis_url,
                "PYTHONPATH": str(ROOT),
            }
        )
        # The production worker command line (entrypoints.worker.worker_argv, prefork on Redis)
        # plus the probe module. WARNING: 50,000 "Received task" lines would only cost CPU.
        argv = worker_argv(self.app, concurrency=concurrency, loglevel="WARNING")
        command = [sys.executable, "-m", "celery", "-A", "entrypoints.celery_app", *argv]
        self.log = self.folder / "worker.log"
        self.process = ChildProcess(
            [*command, "--include=bench.countdown_probe"], self.log, env=env, cwd=self.folder
        ).start()
        self.redis = redis.Redis.from_url(redis_url)

    def wait_ready(self, timeout_s: float = 120.0) -> None:
        """Until the worker has run a ping (it consumes, its pool is up)."""
        token = uuid.uuid4().hex
        self.app.send_task("aftersales.ping", args=[token])
        proof = self.folder / "pings" / token
        wait_until(proof.exists, timeout_s, f"the worker (visibility {self.visibility_s} s)", self)

    def queued(self) -> int:
        return int(self.redis.llen(f"{self.prefix}celery"))

    def unacked(self) -> int:
        return int(self.redis.hlen(f"{self.prefix}unacked"))

    def executions(self) -> tuple[int, int]:
        """(task ids run at least once, runs in all)."""
        counts = [int(value) for value in self.redis.hvals(self.counter_key)]
        return len(counts), sum(counts)

    def alive(self) -> bool:
        return self.process.alive()

    def stop(self) -> None:
        self.process.stop(grace_s=30)
        self.app.close()
        self.redis.close()


def wait_until(
    condition: Callable[[], object], timeout_s: float, what: str, worker: NaiveWorker | None = None
) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if worker is not None and not worker.alive():
            raise RuntimeError(f"{what}: worker exited; see {worker.log}")
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout_s:.0f} s waiting for {what}")
        time.sleep(0.2)


@contextmanager
def naive_workers(
    redis_url: str, folder: Path, visibilities: list[int], concurrency: int
) -> Iterator[list[NaiveWorker]]:
    with ExitStack() as stack:
        workers = []
        for visibility in visibilities:
            worker = NaiveWorker(redis_url, folder, visibility, concurrency)
            stack.callback(worker.stop)
            workers.append(worker)
        for worker in workers:
            worker.wait_ready()
        yield workers


def run(
    redis_url: str,
    folder: Path,
    *,
    tasks: int,
    visibilities: list[int],
    countdown_s: tuple[float, float],
    concurrency: int,
    progress: Progress,
    grace_s: float = 30.0,
) -> list[NaiveResult]:
    """Every visibility timeout at once (one worker each, same countdowns), then the results.

    The workers run side by side to keep the benchmark within minutes; they share the CPU, which
    delays executions but changes neither memory per pending task nor what Redis redelivers.
    ``grace_s`` after the last task first ran, the counts are read: time for late duplicates.
    """
    rng = random.Random(3)
    # Due times counted from the first send, not from each task's own send: with a slow producer
    # the first tasks would otherwise run before the last are sent, and the worker would never
    # hold them all at once.
    due_after = [rng.uniform(*countdown_s) for _ in range(tasks)]
    with naive_workers(redis_url, folder, visibilities, concurrency) as workers:
        samplers = [resources.RssSampler({"worker": w.process.pid}) for w in workers]
        with ExitStack() as stack:
            for sampler in samplers:
                sampler.sample()
                stack.enter_context(sampler)
            before = [s.memory["worker"].last_kib for s in samplers]
            peak_held = [0] * len(workers)
            pending_kib = list(before)

            def observe() -> None:
                """The most messages each worker held (Redis' unacked hash) and its RSS then."""
                for index, worker in enumerate(workers):
                    held = worker.unacked()
                    if held > peak_held[index]:
                        samplers[index].sample()
                        peak_held[index] = held
                        pending_kib[index] = samplers[index].memory["worker"].last_kib

            started = time.monotonic()
            sending = progress.add_task("naive: apply_async(countdown=...)", total=tasks)
            probes = [w.app.tasks[NAME] for w in workers]
            for number, due in enumerate(due_after, 1):
                countdown = max(0.0, due - (time.monotonic() - started))
                for worker, probe in zip(workers, probes, strict=True):
                    probe.apply_async(args=[worker.counter_key], countdown=countdown)
                if number % 500 == 0 or number == tasks:
                    progress.update(sending, completed=number)
                    observe()
            # Until every task id has run once. A worker that keeps being handed redelivered copies
            # (short visibility timeout) may never see its queue empty, so that is only noted.
            received_after: list[float] = [0.0] * len(workers)
            for sampler in samplers:
                sampler.phase = "running"
            ran = progress.add_task("naive: task ids run", total=tasks * len(workers))
            all_ran_after: list[float | None] = [None] * len(workers)
            deadline = time.monotonic() + countdown_s[1] + 600
            while any(after is None for after in all_ran_after) and time.monotonic() < deadline:
                observe()
                done = 0
                for index, worker in enumerate(workers):
                    if not received_after[index] and worker.queued() == 0:
                        received_after[index] = time.monotonic() - started
                    unique, _ = worker.executions()
                    done += unique
                    if unique >= tasks and all_ran_after[index] is None:
                        all_ran_after[index] = time.monotonic() - started
                progress.update(ran, completed=done)
                time.sleep(0.5)
            grace = progress.add_task(f"naive: {grace_s:.0f} s for late duplicates", total=None)
            time.sleep(grace_s)
            progress.update(grace, total=1, completed=1)
        results = []
        for index, worker in enumerate(workers):
            unique, executions = worker.executions()
            memory = samplers[index].memory
            child = memory.get("worker child")
            results.append(
                NaiveResult(
                    visibility_s=worker.visibility_s,
                    tasks=tasks,
                    concurrency=concurrency,
                    countdown_s=countdown_s,
                    rss_before_kib=before[index],
                    rss_pending_kib=pending_kib[index],
                    peak_held=peak_held[index],
                    rss_max_kib=memory["worker"].max_kib,
                    rss_final_kib=memory["worker"].last_kib,
                    child_max_kib=child.max_kib if child else 0,
                    received_after_s=received_after[index],
                    executed_ids=unique,
                    executions=executions,
                    all_ran_after_s=all_ran_after[index],
                    load=resources.load_average(),
                )
            )
        return results


def results_table(results: list[NaiveResult]) -> Table:
    table = Table(title="Naive timers: Celery countdown tasks held by the worker")
    for column in (
        "broker visibility timeout",
        "tasks",
        "worker RSS before",
        "held at peak",
        "RSS then",
        "KiB / pending task",
        "max / final",
        "largest child",
        "ids run",
        "runs",
        "duplicates",
        "load at end",
    ):
        table.add_column(column, justify="left" if column.startswith("broker") else "right")
    for r in results:
        table.add_row(
            r.label,
            f"{r.tasks:,}",
            f"{r.rss_before_kib / 1024:.1f} MB",
            f"{r.peak_held:,}",
            f"{r.rss_pending_kib / 1024:.1f} MB",
            f"{r.kib_per_pending_task:.2f}",
            f"{r.rss_max_kib / 1024:.1f} / {r.rss_final_kib / 1024:.1f} MB",
            f"{r.child_max_kib / 1024:.1f} MB",
            f"{r.executed_ids:,}",
            f"{r.executions:,}",
            f"{r.duplicates:,}",
            r.load,
        )
    return table


def summary(results: list[NaiveResult]) -> str:
    parts = [
        f"{r.label}: {r.kib_per_pending_task:.2f} KiB/pending task "
        f"(RSS {r.rss_before_kib / 1024:.0f} -> {r.rss_pending_kib / 1024:.0f} MB holding "
        f"{r.peak_held:,}), {r.duplicates:,} duplicate runs of {r.executed_ids:,} ids"
        for r in results
    ]
    return "SUMMARY naive_countdown: " + "; ".join(parts)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=50_000)
    parser.add_argument(
        "--visibility",
        type=int,
        action="append",
        help="broker visibility timeout (s); repeat for several "
        f"(default {PRODUCTION_VISIBILITY_S} and 30)",
    )
    parser.add_argument("--countdown-min", type=float, default=150.0)
    parser.add_argument("--countdown-max", type=float, default=240.0)
    parser.add_argument("--concurrency", type=int, default=2)
    args = parser.parse_args(argv)
    console = support.console()
    support.print_machine(console, support.machine())
    folder = Path(tempfile.mkdtemp(prefix="aftersales-naive-"))
    with resources.private_redis(folder / "redis") as redis_url, support.progress(console) as bar:
        results = run(
            redis_url,
            folder,
            tasks=args.tasks,
            visibilities=args.visibility or [PRODUCTION_VISIBILITY_S, 30],
            countdown_s=(args.countdown_min, args.countdown_max),
            concurrency=args.concurrency,
            progress=bar,
        )
    console.print(results_table(results))
    console.print(summary(results))


if __name__ == "__main__":
    main()
