"""The events benchmark's deployment: workers and the API as child processes on a private Redis
and a throwaway database, and how to read their state.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psycopg
import redis
from celery import Celery
from rich.console import Console

from bench import resources, support
from bench.events_seeding import Seeded, feed_sources, run_feeds, seed, write_sources
from entrypoints.processes import ChildProcess, free_port, stop_all
from persistence.db import dispose_engine

ROOT = Path(__file__).resolve().parents[1]
#: Celery's default queue, which every task of ours uses.
QUEUE = "celery"
POLL_S = 0.005
#: Longest wait for anything (a drain, a worker to start) before the run is declared stuck.
DEADLINE_S = 180.0
#: The sources file written to the run's folder and named by ``AFTERSALES_SOURCES_FILE``.
SOURCES_FILE = "sources.toml"


def _cpu_seconds(pid: int) -> float:
    """utime + stime of a live process (0 when it is gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            parent = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        if parent == pid:
            found.append(int(entry.name))
    return found


@dataclass
class Stack:
    """The run's database, broker, workers and API, and how to read their state."""

    database_url: str
    conninfo: str
    broker_url: str
    folder: Path
    concurrency: int
    #: Workers send task events and heartbeats (``AFTERSALES_TASK_EVENTS``, on by default).
    task_events: bool = True
    workers: list[ChildProcess] = field(default_factory=list)
    api: ChildProcess | None = None
    api_url: str = ""
    token: str = ""
    startup_failures: int = 0
    app: Celery = field(init=False)
    broker: redis.Redis = field(init=False)
    db: psycopg.Connection[Any] = field(init=False)

    def __post_init__(self) -> None:
        self.app = Celery("events-e2e-bench", broker=self.broker_url)
        self.broker = redis.Redis.from_url(self.broker_url)
        self.db = psycopg.connect(self.conninfo, autocommit=True)

    @property
    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("AFTERSALES_")}
        env |= {
            "AFTERSALES_DATABASE_URL": self.database_url,
            "AFTERSALES_BROKER_URL": self.broker_url,
            "AFTERSALES_PING_DIR": str(self.folder / "pings"),
            # The feeds' carrier and payment sources (bench.events_seeding.write_sources).
            "AFTERSALES_SOURCES_FILE": str(self.folder / SOURCES_FILE),
            # The bench sends events from one token far faster than a producer would.
            "AFTERSALES_API_RATE_LIMIT_PER_MINUTE": "0",
            "AFTERSALES_TASK_EVENTS": "true" if self.task_events else "false",
        }
        return env

    def cli(self, *args: str) -> list[str]:
        return [sys.executable, "-m", "entrypoints.cli", *args]

    def start_workers(self, count: int) -> None:
        for index in range(count):
            command = self.cli("worker", "--concurrency", str(self.concurrency))
            log = self.folder / f"worker-{index}.log"
            self.workers.append(ChildProcess(command, log, env=self.env, cwd=self.folder).start())
        self.ping()
        self.startup_failures = self._prime()

    def _prime(self, attempts: int = 10) -> int:
        """Run relays (idempotent, harmless) until a round of them fails nowhere; the number of
        tasks that failed meanwhile.

        Each pool child inherits the connection the ``worker`` command opened in the main process
        to check the schema (entrypoints/cli/workers.py ``_checked_settings``), and the children
        use it at once: their first tasks fail with ``SetupError`` (seen in every run). An event
        that met it would be acknowledged as failed, i.e. lost, so the bench lets relays meet it.
        """
        failed = 0
        for _ in range(attempts):
            before = self.failures()
            for _ in range(2 * len(self.workers) * self.concurrency):
                self.app.send_task("aftersales.relay_outbox")
            wait_for(lambda: self.in_broker() == 0, "the relays to run")
            new = self.failures() - before
            failed += new
            if not new:
                return failed
        raise RuntimeError(f"the workers' tasks still fail after {attempts} rounds of relays")

    def failures(self) -> int:
        """Tasks that raised, from the workers' logs."""
        return sum(
            log.read_text(errors="replace").count("raised unexpected")
            for log in self.folder.glob("worker-*.log")
        )

    def start_api(self) -> None:
        created = subprocess.run(
            self.cli("tokens", "create", "--role", "admin", "--json"),
            cwd=self.folder,
            env=self.env,
            capture_output=True,
            check=True,
        )
        self.token = json.loads(created.stdout)["token"]
        port = free_port()
        command = self.cli("serve", "--host", "127.0.0.1", "--port", str(port))
        self.api = ChildProcess(command, self.folder / "api.log", env=self.env, cwd=self.folder)
        self.api.start()
        self.api_url = f"http://127.0.0.1:{port}"

        def healthy() -> bool:
            try:
                return httpx.get(f"{self.api_url}/healthz", timeout=1).status_code == 200
            except httpx.HTTPError:
                return False

        self.api.wait_until(healthy, "the API to answer", DEADLINE_S)

    def stop(self) -> None:
        stop_all([*self.workers, *([self.api] if self.api else [])])
        self.db.close()
        self.broker.close()

    def check_alive(self) -> None:
        for process in self.workers:
            if not process.alive():
                raise RuntimeError(f"a worker exited with {process.returncode}")

    # -- the broker ---------------------------------------------------------------------------
    def ping(self) -> float:
        """Send ``aftersales.ping`` and wait for its proof; the worker's completion time."""
        token = uuid.uuid4().hex
        self.app.send_task("aftersales.ping", args=[token])
        proof = self.folder / "pings" / token

        def ran() -> bool:
            self.check_alive()
            return proof.exists()

        wait_for(ran, "a ping to run")
        return float(json.loads(proof.read_text())["at"])

    def _control(self, command: str) -> None:
        # ``limit``: return once every worker answered, not after the whole timeout.
        replies = getattr(self.app.control, command)(
            QUEUE, reply=True, timeout=10, limit=len(self.workers)
        )
        if len(replies) != len(self.workers):
            raise RuntimeError(f"{command}: {len(replies)} of {len(self.workers)} workers replied")

    def pause(self) -> None:
        """The workers stop taking messages (those in hand are finished)."""
        self._control("cancel_consumer")

    def resume(self) -> None:
        self._control("add_consumer")

    def in_broker(self) -> int:
        """Messages queued or delivered and not yet acknowledged."""
        pipe = self.broker.pipeline(transaction=False)
        pipe.llen(QUEUE)
        pipe.hlen("unacked")
        queued, unacked = pipe.execute()
        return int(queued) + int(unacked)

    # -- the database ---------------------------------------------------------------------------
    def applied(self, feed: str) -> int:
        """Events of ``feed`` applied (recorded), from all its sources."""
        row = self.db.execute(
            "SELECT count(*) FROM inbound_events WHERE source = ANY(%s)", (feed_sources(feed),)
        ).fetchone()
        assert row is not None
        return int(row[0])

    def outbox_open(self) -> int:
        row = self.db.execute("SELECT count(*) FROM outbox WHERE completed_at IS NULL").fetchone()
        assert row is not None
        return int(row[0])

    def settled(self) -> bool:
        # Outbox first: a consumer completes its row before its message is acknowledged.
        return self.outbox_open() == 0 and self.in_broker() == 0

    # -- CPU ------------------------------------------------------------------------------------
    def cpu(self) -> dict[str, float]:
        """CPU seconds so far of each part of the deployment."""
        backends = [
            int(row[0])
            for row in self.db.execute(
                "SELECT pid FROM pg_stat_activity WHERE datname = current_database() "
                "AND pid <> pg_backend_pid()"
            )
        ]
        redis_pid = int(self.broker.info("server")["process_id"])
        mains = [w.pid for w in self.workers]
        return {
            # A count, not seconds: the commands Redis processed.
            "redis commands": float(self.broker.info("stats")["total_commands_processed"]),
            "worker main": sum(_cpu_seconds(pid) for pid in mains),
            "pool children": sum(_cpu_seconds(c) for pid in mains for c in _children(pid)),
            "postgres": sum(_cpu_seconds(pid) for pid in backends),
            "redis": _cpu_seconds(redis_pid),
            "api": _cpu_seconds(self.api.pid) if self.api else 0.0,
            "bench": time.process_time(),
        }

    def pool_pids(self) -> list[int]:
        return [c for w in self.workers for c in _children(w.pid)]


def wait_for(
    condition: Callable[[], Any], what: str, timeout: float = DEADLINE_S, every: float = POLL_S
) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(every)


def load() -> str:
    return " ".join(f"{value:.2f}" for value in os.getloadavg())


@contextmanager
def deployment(options: argparse.Namespace, console: Console) -> Iterator[tuple[Stack, Seeded]]:
    server_url = support.postgres_url(options.postgres_url)
    with ExitStack() as stack_:
        folder = Path(stack_.enter_context(tempfile.TemporaryDirectory(prefix="events-e2e-")))
        if options.keep:
            folder = Path(tempfile.mkdtemp(prefix="events-e2e-kept-"))
        (folder / "pings").mkdir()
        write_sources(folder / SOURCES_FILE, run_feeds(options.rounds))
        database = stack_.enter_context(support.throwaway_database("postgres", server_url))
        assert database.conninfo is not None
        broker_url = stack_.enter_context(resources.private_redis(folder / "redis"))
        seeded = seed(database.url)
        stack = Stack(
            database.url,
            database.conninfo,
            broker_url,
            folder,
            options.concurrency,
            task_events=getattr(options, "task_events", True),
        )
        stack_.callback(dispose_engine, database.url)
        stack_.callback(stack.stop)
        started = time.monotonic()
        stack.start_workers(options.workers)
        stack.start_api()
        console.print(
            f"{options.workers} worker(s) × {options.concurrency} prefork children and the API "
            f"ready in {time.monotonic() - started:.1f} s (logs in {folder}); "
            f"{stack.startup_failures} tasks failed while priming the pool children"
        )
        yield stack, seeded
        if options.keep:
            console.print(f"kept {folder}")
