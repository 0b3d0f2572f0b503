"""What ``bench/chaos_kill.py`` and ``bench/chaos_outages.py`` share: the deployment.

A throwaway PostgreSQL database, a ``redis-server`` of the run's own, a ``FileClock`` every
process reads, and ``celery worker`` / ``celery beat`` processes started as ``aftersales worker``
/ ``aftersales beat`` start them, under a supervisor that restarts what dies. The workers name
their PostgreSQL sessions ``aftersales-chaos-worker`` so that an outage ends theirs only. The
driver is ``bench.chaos_driver``, the checks ``bench.chaos_checks``.
"""

from __future__ import annotations

import contextlib
import os
import random
import shutil
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import redis
import sqlalchemy as sa
from celery import Celery
from kombu.exceptions import OperationalError
from sqlalchemy.engine import make_url
from sqlalchemy.pool import NullPool

from adapters.fake_gateways import FakePaymentGateway
from bench import support
from config.settings import BrokerSettings, DatabaseSettings, Settings, WorkerSettings
from entrypoints.composition import build_service
from entrypoints.processes import ChildProcess, free_port, redis_server_command, stop_all
from entrypoints.worker import worker_argv
from persistence.db import normalize_url
from tasks import producer
from tasks.app import create_app
from tasks.kick import RELAY_TASK
from workflow.clock import FileClock
from workflow.service import CaseService
from workflow.states import CaseState

ROOT = Path(__file__).resolve().parents[1]
#: ``application_name`` of the workers' PostgreSQL sessions (what an outage terminates).
WORKER_APPLICATION = "aftersales-chaos-worker"

#: Broker timing of the run. A killed worker's unacknowledged messages come back after the
#: visibility timeout; the time limit and retry cap stay below it (``Settings`` checks).
VISIBILITY_TIMEOUT_S = 10
TASK_TIME_LIMIT_S = 6
RETRY_CAP_S = 3

#: Simulated seconds the clock moves per real second while events flow: deadlines of hours and
#: days never come due by themselves; only the driver's jumps make them.
CLOCK_SPEED = 10
#: The relay publishes again a row not completed this long (simulated) after its publication.
OUTBOX_REDELIVER_AFTER_S = 120
#: Jumps that bring the waiting cases' deadlines due: the 48 h review, then the 7-day return
#: shipment and dispute window.
JUMPS = (timedelta(hours=49), timedelta(days=8))

#: (kind, case type, weight): what a wave is made of. ``silent``: the merchant never reviews
#: and the buyer never ships (two timers close it); ``rejected``: the buyer never disputes.
KINDS: tuple[tuple[str, str, int], ...] = (
    ("return_refund", "return_refund", 30),
    ("exchange", "exchange", 15),
    ("repair", "repair", 15),
    ("refund_only", "refund_only", 20),
    ("silent", "return_refund", 10),
    ("rejected", "return_refund", 10),
)
CASE_TYPE_OF = {kind: case_type for kind, case_type, _ in KINDS}
#: Where the cases that wait for deadlines must be before each clock jump (the others are
#: terminal by then): before the first, the unreviewed application and the rejection; before
#: the second, the return approved by its review deadline and never shipped.
WAITING_FOR_TIMER: tuple[dict[str, CaseState], ...] = (
    {"silent": CaseState.SUBMITTED, "rejected": CaseState.REJECTED},
    {"silent": CaseState.PICKUP, "rejected": CaseState.REJECTED},
)


def wait_until(condition: Callable[[], Any], what: str, timeout: float) -> Any:
    """Poll ``condition`` until it returns something truthy; raise ``TimeoutError`` past it."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(0.1)


# -- a private Redis -------------------------------------------------------------------------------


class RedisServer:
    """``redis-server`` on a free port, nothing saved (as CI runs it), stopped and started at
    will."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.port = free_port(6500, 6700)
        self.process: ChildProcess | None = None
        self.starts = 0

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.starts += 1
        log = self.folder / f"redis-{self.starts}.log"
        command = redis_server_command(self.port, self.folder, log)
        self.process = ChildProcess(command, self.folder / f"redis-{self.starts}.out").start()
        self.process.wait_until(self._answers, f"redis-server on port {self.port}", timeout=30)

    def shutdown_nosave(self) -> None:
        """``SHUTDOWN NOSAVE``: every queued and unacknowledged message is gone."""
        client = redis.Redis(port=self.port, socket_connect_timeout=2)
        with contextlib.suppress(redis.ConnectionError):
            client.shutdown(nosave=True)
        client.close()
        if self.process is not None:
            self.process.wait(timeout=30)

    def stop(self) -> None:
        if self.process is not None:
            self.process.stop(grace_s=30)

    def _answers(self) -> bool:
        client = redis.Redis(port=self.port, socket_connect_timeout=0.5)
        try:
            return bool(client.ping())
        except redis.RedisError:
            return False
        finally:
            client.close()


# -- processes -------------------------------------------------------------------------------------


@dataclass
class Slot:
    """One worker or beat process, started again by the supervisor when it dies (if allowed)."""

    name: str
    command: Callable[[int], list[str]]
    folder: Path
    env: dict[str, str]
    process: ChildProcess | None = None
    starts: int = 0

    @property
    def log(self) -> Path:
        return self.folder / f"{self.name}-{self.starts}.log"

    def start(self) -> None:
        self.starts += 1
        self.process = ChildProcess(self.command(self.starts), self.log, env=self.env, cwd=ROOT)
        self.process.start()

    def alive(self) -> bool:
        return self.process is not None and self.process.alive()

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def children(self) -> list[int]:
        """The pool processes (prefork children) of this worker."""
        return self.process.children() if self.process is not None else []

    def kill_group(self) -> None:
        """SIGKILL the process and everything it started: nothing gets to clean up."""
        if self.process is not None:
            self.process.kill()

    def ready(self) -> bool:
        return "ready." in self.log.read_text(errors="replace")

    def exits(self) -> str | None:
        """Why this start of the process ended, or None while it runs."""
        if self.process is None or self.alive():
            return None
        crash = [
            line for line in self.process.output().splitlines() if "Unrecoverable error" in line
        ]
        return crash[0] if crash else f"exit code {self.process.returncode}"


class Supervisor:
    """Starts killed slots again, as systemd or Kubernetes would (a thread, every 0.2 s)."""

    def __init__(self, slots: Sequence[Slot]) -> None:
        self.slots = list(slots)
        self.restarts = 0
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Supervisor:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=30)

    @contextlib.contextmanager
    def held(self) -> Iterator[None]:
        """No restart while held (a kill is picking its victim)."""
        with self._lock:
            yield

    def _run(self) -> None:
        while not self._stop.wait(0.2):
            with self._lock:
                for slot in self.slots:
                    if not slot.alive():
                        slot.start()
                        self.restarts += 1


class AtRandomMoments:
    """Runs ``action`` in a thread after pauses drawn uniformly from ``every`` (min, max seconds),
    until the ``with`` block ends."""

    def __init__(
        self, every: tuple[float, float], rng: random.Random, action: Callable[[], None]
    ) -> None:
        self.every = every
        self.rng = rng
        self.action = action
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def __enter__(self) -> AtRandomMoments:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=60)

    def _loop(self) -> None:
        while not self._stop.wait(self.rng.uniform(*self.every)):
            self.action()


# -- the deployment --------------------------------------------------------------------------------


@dataclass
class Deployment:
    folder: Path
    database_url: str
    redis: RedisServer
    clock: FileClock
    env: dict[str, str]
    app: Celery
    service: CaseService
    payments: FakePaymentGateway
    workers: list[Slot] = field(default_factory=list)
    beats: list[Slot] = field(default_factory=list)
    #: Keep the folder (process logs) after the run: set when a check failed.
    keep_folder: bool = False
    #: Producers keep their events in the ledger of unconfirmed events (tasks/producer.py).
    keep_events: bool = True

    def add_worker(self, concurrency: int) -> Slot:
        index = len(self.workers)

        def command(start: int) -> list[str]:
            argv = worker_argv(
                self.app,
                concurrency=concurrency,
                loglevel="INFO",
                pool="prefork",
                hostname=f"chaos-w{index}-{start}@%h",
            )
            return [sys.executable, "-m", "celery", "-A", "entrypoints.celery_app", *argv]

        slot = Slot(f"worker-{index}", command, self.folder, self.env)
        slot.start()
        self.workers.append(slot)
        return slot

    def add_beat(self) -> Slot:
        """A stand-alone scheduler (``aftersales beat``) with a state file of its own."""
        index = len(self.beats)
        schedule = self.folder / f"beat-{index}" / "celerybeat-schedule"
        schedule.parent.mkdir()

        def command(start: int) -> list[str]:
            return [
                *(sys.executable, "-m", "celery", "-A", "entrypoints.celery_app", "beat"),
                *("--loglevel=INFO", f"--schedule={schedule}"),
            ]

        slot = Slot(f"beat-{index}", command, self.folder, self.env)
        slot.start()
        self.beats.append(slot)
        return slot

    def wait_ready(self, timeout: float = 120) -> None:
        def ready() -> bool:
            for slot in self.workers:
                if not slot.alive():
                    raise RuntimeError(f"{slot.log.name} exited: {slot.exits()}")
            return all(slot.ready() for slot in self.workers)

        wait_until(ready, "the workers to be ready", timeout)

    def send_event(self, envelope: dict[str, Any]) -> bool:
        """Publish one event with the producer helper (kept in its ledger unless
        ``keep_events`` is off); False when the broker is unreachable (the driver tries again
        on its next round)."""
        try:
            producer.publish_event(envelope, self.redis.url, keep=self.keep_events)
        except (OperationalError, redis.RedisError, OSError):
            return False
        return True

    def stop(self) -> None:
        stop_all(slot.process for slot in self.workers + self.beats if slot.process is not None)


@contextlib.contextmanager
def deployment(server_url: str, extra_env: dict[str, str] | None = None) -> Iterator[Deployment]:
    """A database, a Redis and a clock of the run's own; processes are added by the caller and
    all stopped (then the database dropped and Redis stopped) on the way out."""
    folder = Path(tempfile.mkdtemp(prefix="aftersales-chaos-"))
    (folder / "redis").mkdir()
    server = RedisServer(folder / "redis")
    server.start()
    clock_file = folder / "clock"
    clock = FileClock(str(clock_file))
    clock.set(support.T0)
    try:
        with support.throwaway_database("postgres", server_url) as database:
            worker_url = make_url(database.url).update_query_dict(
                {"application_name": WORKER_APPLICATION}
            )
            env = _process_env(worker_url.render_as_string(hide_password=False), server.url)
            env["AFTERSALES_CLOCK_FILE"] = str(clock_file)
            env["AFTERSALES_PING_DIR"] = str(folder / "pings")
            env.update(extra_env or {})
            settings = Settings(
                database=DatabaseSettings(url=database.url),
                broker=BrokerSettings(url=server.url, visibility_timeout_s=VISIBILITY_TIMEOUT_S),
                worker=WorkerSettings(
                    task_time_limit_s=TASK_TIME_LIMIT_S, retry_backoff_max_s=RETRY_CAP_S
                ),
                clock_file=clock_file,
                policy_file=None,
            )
            app = create_app(settings)
            service = build_service(settings, clock, outbox_written=lambda: _kick(app))
            run = Deployment(
                folder,
                database.url,
                server,
                clock,
                env,
                app,
                service,
                FakePaymentGateway(database.url),
            )
            try:
                yield run
            finally:
                run.stop()
                app.close()
    finally:
        server.stop()
    if not run.keep_folder:
        shutil.rmtree(folder, ignore_errors=True)


def _kick(app: Celery) -> None:
    # The relay's beat entry is the net; a kick lost with Redis down costs a second at most.
    with contextlib.suppress(Exception):
        app.send_task(RELAY_TASK)


def _process_env(database_url: str, broker_url: str) -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if not key.startswith("AFTERSALES_")}
    env.update(
        {
            "AFTERSALES_DATABASE_URL": database_url,
            "AFTERSALES_BROKER_URL": broker_url,
            "AFTERSALES_BROKER_VISIBILITY_TIMEOUT_S": str(VISIBILITY_TIMEOUT_S),
            "AFTERSALES_TASK_TIME_LIMIT_S": str(TASK_TIME_LIMIT_S),
            "AFTERSALES_RETRY_BACKOFF_MAX_S": str(RETRY_CAP_S),
            "AFTERSALES_TIMER_SWEEP_INTERVAL_S": "0.5",
            "AFTERSALES_OUTBOX_RELAY_INTERVAL_S": "1.0",
            "AFTERSALES_OUTBOX_REDELIVER_AFTER_S": str(OUTBOX_REDELIVER_AFTER_S),
            "AFTERSALES_TIMER_RECLAIM_AFTER_S": "120",
            "PYTHONPATH": str(ROOT),
        }
    )
    for fake in ("carrier", "payment", "shipper", "notifier"):
        env[f"AFTERSALES_FAKE_{fake.upper()}_LATENCY_MS"] = "20"
    return env


def drop_sessions(database_url: str, application: str = WORKER_APPLICATION) -> int:
    """``pg_terminate_backend`` on the sessions named ``application`` (libpq's
    ``application_name``) of this database, and of no other; how many there were. The server
    ends each at once, inside a transaction or idle in a pool, as a restart or a network cut
    would."""
    engine = sa.create_engine(
        normalize_url(database_url), isolation_level="AUTOCOMMIT", poolclass=NullPool
    )
    query = sa.text(
        "SELECT count(*) FILTER (WHERE pg_terminate_backend(pid)) FROM pg_stat_activity"
        " WHERE datname = current_database() AND application_name = :application"
        " AND pid <> pg_backend_pid()"
    )
    try:
        with engine.connect() as connection:
            return int(connection.execute(query, {"application": application}).scalar_one())
    finally:
        engine.dispose()
