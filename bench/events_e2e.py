"""Benchmark 2: events end to end, through Redis and real Celery workers into PostgreSQL.

A throwaway PostgreSQL database (migrated to head) holds cases seeded where carrier and payment
events apply: returns awaiting pickup (``parcel.picked_up``, named by order and a new tracking
number, as a carrier's first news of a parcel the platform booked), returns on their way back
(``parcel.delivered``, by case id) and refunds in flight (``refund.succeeded``, by case id, with
the attempt's idempotency key and amount). A private ``redis-server`` is the broker; the workers
are the production command (``python -m entrypoints.cli worker``: prefork on Redis) and the HTTP
API is ``python -m entrypoints.cli serve``, both on the database and broker of this run only.

Each round measures, one after the other (order reversed every other round):

- ``noop``: ``aftersales.noop`` tasks, the broker's and the worker's own ceiling;
- ``single``: ``aftersales.ingest_event``, one envelope per message
  (``tasks.producer.publish_event``); the worker applies the messages that wait for a busy pool
  together (tasks/coalesce.py; the summary gives the jobs' sizes);
- ``batch``: ``aftersales.ingest_events``, ``--batch-size`` envelopes per message
  (``tasks.producer.publish_events``);
- ``http``: ``POST /events`` with arrays of ``--http-batch`` envelopes, from ``--http-clients``
  threads (the API applies them in the request: no broker).

Throughput is a drain: the workers stop consuming (``control.cancel_consumer``), the bench
publishes the round's messages, the workers start again (``add_consumer``) and, from the first
poll that sees units done (those are not counted), the clock runs
until the last one is done. So the producer's own CPU is outside the window, and every kind
measures what the workers (and the database) sustain. "Done" is read from what exists:

- a no-op is done when its message is acknowledged. ``task_acks_late`` acks after the task
  returned, and kombu's Redis transport keeps every delivered, unacknowledged message in the
  ``unacked`` hash until then (kombu/transport/redis.py, ``QoS.append`` / ``_remove_from_indices``),
  so completed = published - LLEN(queue) - HLEN(unacked), polled every 5 ms: no result backend, no
  task events, nothing added to the worker.
- an event is applied when its ``(source, event_id)`` row in ``inbound_events`` is visible: that
  row is written in the transaction that applies the event (docs/events.md, Deduplication), so it
  is visible exactly from that transaction's commit. Each measurement uses its own ``source``, so
  the poll is an index range scan of the primary key.

``applied/s`` stops at the last event's commit. The transitions also write outbox rows, which the
workers relay (``aftersales.relay_outbox``, kicked after each commit) and perform
(``aftersales.notify``) behind the events; ``settled/s`` runs until that is done too (queue and
unacked hash empty, every outbox row completed): what the workers sustain for a stream of events.
The HTTP API does not kick the relay (beat's periodic relay would): the bench sends one relay task
when the requests are done, and ``settled/s`` includes it.

Latency is measured apart, with the producer publishing at a fixed pace (``--latency-load`` of
the measured single-event and batch settled rates: what the workers sustain with the effects) for
``--latency-seconds`` each: publish time kept in the producer, commit time from a poller reading
new ``inbound_events`` rows every 5 ms (the commit is before the poll that first sees the row and
after the one before it). ``aftersales.ping`` tasks sent ten a second in the same queue are the
broker's and worker's own latency (the worker writes its completion time into the ping file).
``received_at`` of ``inbound_events`` (the worker's clock when the
transition's transaction started) splits the latency into waiting and applying.

CPU per event comes from /proc: the worker's main process, its pool children, the PostgreSQL
backends of this database, redis-server, the API server. ``--profile DIR`` afterwards samples
the pool children with py-spy (install it into the venv yourself: it is not a dependency) during
an unmeasured single-event and batch drain and writes where their time goes to DIR.

Afterwards every event must have been applied exactly once: one ``inbound_events`` row, one
transition by its actor with its trigger, its case in the expected state at the expected version;
no dead letter; every outbox row completed.

    python -m bench.events_e2e                  # defaults: 3-5 minutes, by the machine's load
    python -m bench.events_e2e --rounds 5 --concurrency 4
"""

from __future__ import annotations

import argparse
import collections
import json
import math
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import psycopg
import redis
import sqlalchemy as sa
from celery import Celery
from rich.console import Console
from rich.progress import Progress
from rich.table import Table

from bench import support
from config.settings import DatabaseSettings, Settings
from entrypoints.composition import build_service
from persistence.db import dispose_engine, make_engine
from tasks import producer
from workflow.clock import FakeClock
from workflow.model import Actor
from workflow.service import CaseService
from workflow.states import CaseState, Role

ROOT = Path(__file__).resolve().parents[1]
#: Targets of issue 5: single events at this share of the no-op rate; batches at this rate.
SINGLE_TARGET = 0.60
BATCH_TARGET = 2000.0
KINDS = ("noop", "single", "batch", "http")
#: Celery's default queue, which every task of ours uses.
QUEUE = "celery"
POLL_S = 0.005
#: Longest wait for anything (a drain, a worker to start) before the run is declared stuck.
DEADLINE_S = 180.0
BUYER = Actor(Role.BUYER, "b-1")


# -- the cases and their events -------------------------------------------------------------------


@dataclass(frozen=True)
class Flow:
    """A kind of seeded case and the event that moves it one step."""

    name: str
    seeded: CaseState
    reached: CaseState
    trigger: str
    event_type: str


FLOWS = (
    Flow("pickup", CaseState.APPROVED, CaseState.SHIPPED_BACK, "record_pickup", "parcel.picked_up"),
    Flow(
        "delivery",
        CaseState.SHIPPED_BACK,
        CaseState.RETURN_DELIVERED,
        "record_return_delivery",
        "parcel.delivered",
    ),
    Flow("refund", CaseState.REFUNDING, CaseState.REFUNDED, "confirm_refund", "refund.succeeded"),
)


@dataclass
class Seeded:
    """The seeded cases of each flow not used yet, and what the refund events must name."""

    url: str
    templates: dict[str, int]
    versions: dict[str, int]
    refund_key: str
    refund_amount: int
    pools: dict[str, collections.deque[int]] = field(default_factory=dict)
    orders: dict[int, str] = field(default_factory=dict)
    batches: int = 0

    def grow(self, counts: Sequence[int]) -> None:
        """Enough set-based copies of the templates (``support.copy_case``) for ``make_events``
        to be called with each of ``counts``."""
        engine = make_engine(self.url)
        self.batches += 1
        for flow in FLOWS:
            # make_events starts every call with the first flow.
            count = sum(math.ceil(c / len(FLOWS)) for c in counts)
            tag = f"e2e{self.batches}-{flow.name}"
            ids = support.copy_case(engine, self.templates[flow.name], count, tag)
            self.pools.setdefault(flow.name, collections.deque()).extend(ids)
            if flow is FLOWS[0]:
                self.orders.update((case_id, f"o-{tag}-{n}") for n, case_id in enumerate(ids, 1))

    def take(self, flow: Flow) -> int:
        pool = self.pools[flow.name]
        if not pool:
            raise RuntimeError(f"no seeded {flow.name} case left")
        return pool.popleft()


@dataclass(frozen=True)
class Event:
    source: str
    event_id: str
    case_id: int
    flow: Flow
    envelope: dict[str, Any]


def make_events(seeded: Seeded, source: str, count: int) -> list[Event]:
    """``count`` events of ``source``, the flows taking turns, each on a case of its own."""
    events = []
    occurred = datetime.now(UTC).isoformat()
    for n in range(count):
        flow = FLOWS[n % len(FLOWS)]
        case_id = seeded.take(flow)
        event_id = f"{n:07d}"
        envelope: dict[str, Any] = {
            "event_id": event_id,
            "source": source,
            "type": flow.event_type,
            "occurred_at": occurred,
        }
        if flow.name == "pickup":
            envelope |= {"order_id": seeded.orders[case_id], "tracking_no": f"PU{case_id}"}
            envelope["data"] = {"recipient": "merchant"}
        elif flow.name == "delivery":
            envelope |= {"case_id": case_id, "data": {"recipient": "merchant"}}
        else:
            envelope |= {
                "case_id": case_id,
                "data": {
                    "idempotency_key": seeded.refund_key,
                    "reference": f"wx-{case_id}",
                    "amount": seeded.refund_amount,
                },
            }
        events.append(Event(source, event_id, case_id, flow, envelope))
    return events


def _application(order_id: str, now: datetime) -> dict[str, Any]:
    """``support.application`` paid and delivered relative to ``now``: the workers run on the
    system clock, so every deadline must lie ahead of today, whenever the bench runs."""
    application = support.application(order_id)
    application["payment"]["paid_at"] = (now - timedelta(days=5)).isoformat()
    application["delivered_at"] = (now - timedelta(days=2)).isoformat()
    return application


def _template(service: CaseService, clock: FakeClock, flow: Flow, tag: str) -> int:
    """One case driven through the service into ``flow.seeded``."""
    case_id = service.submit(_application(f"o-{tag}-{flow.name}", clock.now())).case.id
    assert case_id is not None
    steps: list[tuple[str, Actor, dict[str, Any] | None]] = [("approve", support.MERCHANT, None)]
    if flow.seeded is not CaseState.APPROVED:
        steps.append(("ship_back", BUYER, {"tracking_no": f"RT-{tag}"}))
    if flow.seeded is CaseState.REFUNDING:
        # Inspecting starts the refund in the same transaction.
        steps += [("confirm_receipt", support.MERCHANT, None), ("inspect", support.MERCHANT, None)]
    for trigger, actor, data in steps:
        clock.advance(timedelta(minutes=5))
        service.fire(case_id, trigger, actor, data)
    state = service.get(case_id).case.state
    if state is not flow.seeded:
        raise RuntimeError(f"{flow.name} template reached {state}, not {flow.seeded}")
    return case_id


def seed(url: str) -> Seeded:
    """A template case of each flow, driven through ``CaseService`` an hour ago; their outbox
    rows are deleted so that the workers have nothing to do but the events. ``Seeded.grow``
    copies them."""
    clock = FakeClock(datetime.now(UTC) - timedelta(hours=1))
    service = build_service(Settings(database=DatabaseSettings(url=url)), clock)
    templates = {flow.name: _template(service, clock, flow, "e2e") for flow in FLOWS}
    refund = service.get(templates["refund"]).case
    assert refund.refund_key is not None and refund.refund_amount is not None
    with make_engine(url).begin() as connection:
        connection.execute(sa.text("DELETE FROM outbox"))
    versions = {name: service.get(case_id).case.version for name, case_id in templates.items()}
    return Seeded(url, templates, versions, refund.refund_key, refund.refund_amount)


# -- processes ------------------------------------------------------------------------------------


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
    workers: list[subprocess.Popen[bytes]] = field(default_factory=list)
    api: subprocess.Popen[bytes] | None = None
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
            # The bench sends events from one token far faster than a producer would.
            "AFTERSALES_API_RATE_LIMIT_PER_MINUTE": "0",
        }
        return env

    def cli(self, *args: str) -> list[str]:
        return [sys.executable, "-m", "entrypoints.cli", *args]

    def start_workers(self, count: int) -> None:
        for index in range(count):
            log = (self.folder / f"worker-{index}.log").open("wb")
            command = self.cli("worker", "--concurrency", str(self.concurrency))
            self.workers.append(
                subprocess.Popen(command, cwd=self.folder, env=self.env, stdout=log, stderr=log)
            )
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
        port = support.free_port()
        log = (self.folder / "api.log").open("wb")
        self.api = subprocess.Popen(
            self.cli("serve", "--host", "127.0.0.1", "--port", str(port)),
            cwd=self.folder,
            env=self.env,
            stdout=log,
            stderr=log,
        )
        self.api_url = f"http://127.0.0.1:{port}"

        def healthy() -> bool:
            assert self.api is not None
            if self.api.poll() is not None:
                raise RuntimeError(f"the API exited with {self.api.returncode}; see {log.name}")
            try:
                return httpx.get(f"{self.api_url}/healthz", timeout=1).status_code == 200
            except httpx.HTTPError:
                return False

        wait_for(healthy, "the API to answer")

    def stop(self) -> None:
        for process in [*self.workers, *([self.api] if self.api else [])]:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for process in [*self.workers, *([self.api] if self.api else [])]:
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=10)
        self.db.close()
        self.broker.close()

    def check_alive(self) -> None:
        for process in self.workers:
            if process.poll() is not None:
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
    def applied(self, source: str) -> int:
        row = self.db.execute(
            "SELECT count(*) FROM inbound_events WHERE source = %s", (source,)
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


# -- one drain ------------------------------------------------------------------------------------


@dataclass
class Drain:
    """One measured drain of one kind."""

    round: int
    kind: str
    units: int
    messages: int
    #: Seconds from the first poll that saw units done to the last unit done (applied, for
    #: events). The clock starts there, not at ``resume``: the control broadcast and the
    #: workers' first fetch take a fixed ~0.5 s that would weigh on a short drain more than
    #: on a long one, and so on the slower kinds more than on the no-op.
    done_s: float
    #: ... and to everything the units caused being done too.
    settled_s: float
    cpu: dict[str, float]
    load: str
    #: Units done after the clock started (those seen at its start are not counted).
    counted: int = 0

    @property
    def rate(self) -> float:
        return self.counted / self.done_s

    @property
    def settled_rate(self) -> float:
        return self.counted / self.settled_s


def _source(round_: int, kind: str) -> str:
    return f"feed-r{round_}-{kind}"


def _publish(stack: Stack, kind: str, events: Sequence[Event], batch: int) -> int:
    """Queue the events the way producers do; the number of messages."""
    envelopes = [event.envelope for event in events]
    if kind == "single":
        for envelope in envelopes:
            producer.publish_event(envelope, stack.broker_url)
        return len(envelopes)
    chunks = [envelopes[i : i + batch] for i in range(0, len(envelopes), batch)]
    for chunk in chunks:
        producer.publish_events(chunk, stack.broker_url)
    return len(chunks)


def _post_all(stack: Stack, events: Sequence[Event], batch: int, clients: int) -> list[float]:
    """POST the events in arrays of ``batch`` from ``clients`` threads; each request's seconds."""
    envelopes = [event.envelope for event in events]
    chunks = [envelopes[i : i + batch] for i in range(0, len(envelopes), batch)]
    headers = {"Authorization": f"Bearer {stack.token}"}
    local = threading.local()

    def post(chunk: list[dict[str, Any]]) -> float:
        if not hasattr(local, "client"):
            local.client = httpx.Client(base_url=stack.api_url, headers=headers, timeout=60)
        started = time.perf_counter()
        response = local.client.post("/events", json=chunk)
        if response.status_code != 202:
            raise RuntimeError(f"POST /events: {response.status_code} {response.text[:300]}")
        applied = response.json()["summary"]["applied"]
        if applied != len(chunk):
            raise RuntimeError(f"POST /events applied {applied} of {len(chunk)}")
        return time.perf_counter() - started

    with ThreadPoolExecutor(clients) as pool:
        return list(pool.map(post, chunks))


def drain(
    stack: Stack,
    kind: str,
    round_: int,
    units: int,
    seeded: Seeded,
    options: argparse.Namespace,
    bar: Progress,
    *,
    during: Callable[[], Any] | None = None,
) -> tuple[Drain, list[Event]]:
    """Measure one kind: queue ``units`` with the workers paused, then time them."""
    label = f"round {round_} {kind}" if round_ else f"warm-up {kind}"
    task = bar.add_task(label, total=units)
    source = _source(round_, kind)
    events = [] if kind == "noop" else make_events(seeded, source, units)
    messages = units
    if kind != "http":
        stack.pause()
        if kind == "noop":
            for _ in range(units):
                stack.app.send_task("aftersales.noop")
        else:
            messages = _publish(stack, kind, events, options.batch_size)
    else:
        messages = math.ceil(units / options.http_batch)
    before = stack.cpu()
    started = time.monotonic()
    recorder = during() if during else None
    if kind == "http":
        poster = threading.Thread(
            target=_post_all, args=(stack, events, options.http_batch, options.http_clients)
        )
        poster.start()
    else:
        stack.resume()

    first_seen: list[tuple[float, int]] = []

    def progress() -> int:
        stack.check_alive()
        done = units - stack.in_broker() if kind == "noop" else stack.applied(source)
        if done and not first_seen:
            first_seen.append((time.monotonic(), done))
        bar.update(task, completed=done)
        return done

    wait_for(lambda: progress() >= units, f"{label} to be done", every=POLL_S)
    if first_seen[0][1] >= units:
        # All done by the first poll that saw any: time it from resuming instead.
        first_seen[0] = (started, 0)
    started, seen_done = first_seen[0]
    done_s = time.monotonic() - started
    if kind == "http":
        poster.join()
        # What beat's periodic relay would do within OUTBOX_RELAY_INTERVAL_S.
        stack.app.send_task("aftersales.relay_outbox")
    wait_for(stack.settled, f"{label}'s effects to be done", every=0.02)
    settled_s = time.monotonic() - started
    if recorder is not None:
        recorder.stop()
    after = stack.cpu()
    bar.update(task, completed=units)
    cpu = {part: after[part] - before[part] for part in before}
    counted = units - seen_done
    drained = Drain(round_, kind, units, messages, done_s, settled_s, cpu, load(), counted)
    return drained, events


# -- latency -------------------------------------------------------------------------------------


class CommitWatch(threading.Thread):
    """Sees each event's ``inbound_events`` row appear: the commit was before the poll that first
    sees it and after the one before. Event ids are zero-padded in publish order, so each poll
    reads only past the longest prefix seen in full."""

    def __init__(self, conninfo: str, source: str, count: int) -> None:
        super().__init__(daemon=True)
        self.source, self.count = source, count
        self.connection = psycopg.connect(conninfo, autocommit=True)
        self.seen: dict[str, float] = {}
        self.polls = 0
        self._halt = threading.Event()

    def run(self) -> None:
        # Every id below ``first_unseen`` has been seen.
        first_unseen = 0
        while not self._halt.is_set() and len(self.seen) < self.count:
            floor = f"{first_unseen - 1:07d}" if first_unseen else ""
            moment = time.time()
            rows = self.connection.execute(
                "SELECT event_id FROM inbound_events WHERE source = %s AND event_id > %s",
                (self.source, floor),
            ).fetchall()
            self.polls += 1
            for (event_id,) in rows:
                self.seen.setdefault(event_id, moment)
            while f"{first_unseen:07d}" in self.seen:
                first_unseen += 1
            self._halt.wait(POLL_S)
        self.connection.close()

    def stop(self) -> None:
        self._halt.set()
        self.join()


@dataclass
class Latency:
    kind: str
    rate: float
    #: publish -> commit (s) of each event; publish -> start of its transaction.
    commit: list[float]
    started: list[float]
    pings: list[float]
    load: str
    events: list[Event]


def _percentile(values: Sequence[float], share: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return math.nan
    return ordered[min(len(ordered) - 1, max(0, math.ceil(share * len(ordered)) - 1))]


def paced(
    stack: Stack, kind: str, rate: float, seconds: float, seeded: Seeded, batch: int, bar: Progress
) -> Latency:
    """Publish ``kind`` at ``rate`` events/s for ``seconds`` (a ping every tenth of a second)."""
    count = max(batch if kind == "batch" else 1, int(rate * seconds))
    if kind == "batch":
        count -= count % batch
    source = _source(99, f"paced-{kind}")
    events = make_events(seeded, source, count)
    task = bar.add_task(f"latency {kind} at {rate:,.0f}/s", total=count)
    watch = CommitWatch(stack.conninfo, source, count)
    watch.start()
    published: dict[str, float] = {}
    pings: list[tuple[str, float]] = []
    step = batch if kind == "batch" else 1
    start = time.monotonic() + 0.05
    next_ping = start
    for index in range(0, count, step):
        due = start + index / rate
        while (now := time.monotonic()) < due:
            if now >= next_ping:
                token = uuid.uuid4().hex
                pings.append((token, time.time()))
                stack.app.send_task("aftersales.ping", args=[token])
                next_ping += 0.1
            time.sleep(min(0.002, max(0.0, due - now)))
        chunk = events[index : index + step]
        moment = time.time()
        if kind == "batch":
            producer.publish_events([e.envelope for e in chunk], stack.broker_url)
        else:
            producer.publish_event(chunk[0].envelope, stack.broker_url)
        for event in chunk:
            published[event.event_id] = moment
        bar.update(task, completed=len(watch.seen))
    wait_for(lambda: len(watch.seen) >= count, f"paced {kind} events to commit")
    watch.stop()
    bar.update(task, completed=count)
    wait_for(stack.settled, f"paced {kind}'s effects to be done", every=0.02)
    started_at = {
        row[0]: row[1].timestamp()
        for row in stack.db.execute(
            "SELECT event_id, received_at FROM inbound_events WHERE source = %s", (source,)
        )
    }
    ping_latencies = []
    for token, moment in pings:
        proof = stack.folder / "pings" / token
        wait_for(proof.exists, "a ping to run")
        ping_latencies.append(float(json.loads(proof.read_text())["at"]) - moment)
    return Latency(
        kind,
        rate,
        [watch.seen[e] - published[e] for e in published],
        [started_at[e] - published[e] for e in published],
        ping_latencies,
        load(),
        events,
    )


# -- profiles -----------------------------------------------------------------------------------


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


def _sampling(
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


# -- verification -------------------------------------------------------------------------------


def verify(stack: Stack, events: Sequence[Event], seeded: Seeded) -> list[str]:
    """Every event applied exactly once, every case where its event left it; the problems."""
    problems = []
    recorded = collections.Counter(
        (row[0], row[1], row[2])
        for row in stack.db.execute(
            "SELECT source, event_id, case_id FROM inbound_events WHERE source LIKE 'feed-%'"
        )
    )
    expected = collections.Counter((e.source, e.event_id, e.case_id) for e in events)
    if recorded != expected:
        missing = expected - recorded
        extra = recorded - expected
        problems.append(f"inbound_events: {len(missing)} missing, {len(extra)} unexpected rows")
    transitions = collections.Counter(
        (int(row[0]), row[1], row[2])
        for row in stack.db.execute(
            "SELECT case_id, \"trigger\", actor FROM transitions WHERE actor LIKE 'carrier:feed-%' "
            "OR actor LIKE 'payment:feed-%'"
        )
    )
    wanted = collections.Counter(
        (
            e.case_id,
            e.flow.trigger,
            f"{'payment' if e.flow.name == 'refund' else 'carrier'}:{e.source}",
        )
        for e in events
    )
    if transitions != wanted:
        problems.append(
            f"event transitions: {sum((wanted - transitions).values())} missing, "
            f"{sum((transitions - wanted).values())} unexpected (an event applied twice?)"
        )
    states = {
        int(row[0]): (row[1], int(row[2]))
        for row in stack.db.execute("SELECT id, state, version FROM cases")
    }
    wrong = [
        e.case_id
        for e in events
        if states[e.case_id] != (e.flow.reached.value, seeded.versions[e.flow.name] + 1)
    ]
    untouched = [
        case_id
        for flow in FLOWS
        for case_id in seeded.pools[flow.name]
        if states[case_id] != (flow.seeded.value, seeded.versions[flow.name])
    ]
    if wrong:
        problems.append(f"{len(wrong)} cases not in their event's state and version: {wrong[:5]}")
    if untouched:
        problems.append(f"{len(untouched)} cases no event named have moved: {untouched[:5]}")
    letters = stack.db.execute("SELECT count(*) FROM dead_letters").fetchone()
    if letters and letters[0]:
        problems.append(f"{letters[0]} dead letters")
    if stack.outbox_open():
        problems.append(f"{stack.outbox_open()} outbox rows not completed")
    return problems


# -- the run ------------------------------------------------------------------------------------


def _sized(calibration: Drain, kind: str, options: argparse.Namespace) -> int:
    """Units for about ``--seconds`` at the calibration's rate, whole messages, at least two per
    prefork child (and 1000 no-ops)."""
    per_message = {"batch": options.batch_size, "http": options.http_batch}.get(kind, 1)
    least = 2 * options.workers * options.concurrency * per_message
    if kind == "noop":
        # A no-op drain of a few hundred lasts well under a second: too short to time.
        least = max(least, 1000)
    wanted = int(calibration.rate * options.seconds) // per_message * per_message
    return max(least, wanted)


def _drains_table(drains: Sequence[Drain]) -> Table:
    table = Table(title="drains: published with the workers paused, then timed")
    for column in ("round", "kind", "units", "msgs", "done s", "units/s", "settled s", "settled/s"):
        table.add_column(column, justify="right")
    table.add_column("Redis cmds/unit")
    table.add_column("CPU ms/unit: main · children · postgres · redis · api")
    table.add_column("load 1/5/15")
    for d in drains:
        cpu = " · ".join(
            f"{d.cpu[p] / d.units * 1e3:.2f}"
            for p in ("worker main", "pool children", "postgres", "redis", "api")
        )
        table.add_row(
            str(d.round),
            d.kind,
            str(d.units),
            str(d.messages),
            f"{d.done_s:.2f}",
            f"{d.rate:,.0f}",
            f"{d.settled_s:.2f}",
            f"{d.settled_rate:,.0f}",
            f"{d.cpu['redis commands'] / d.units:.1f}",
            cpu,
            d.load,
        )
    return table


def _summary_table(drains: Sequence[Drain]) -> tuple[Table, dict[str, dict[str, float]]]:
    table = Table(title="medians over rounds (ratio: per-round rate ÷ the same round's no-op rate)")
    for column in ("kind", "units/s", "÷ no-op", "range", "settled/s", "÷ no-op settled"):
        table.add_column(column, justify="right")
    figures: dict[str, dict[str, float]] = {}
    noop = {d.round: d for d in drains if d.kind == "noop"}
    for kind in KINDS:
        mine = [d for d in drains if d.kind == kind]
        if not mine:
            continue
        ratios = [d.rate / noop[d.round].rate for d in mine]
        settled = [d.settled_rate / noop[d.round].rate for d in mine]
        figures[kind] = {
            "rate": support.median([d.rate for d in mine]),
            "settled": support.median([d.settled_rate for d in mine]),
            "ratio": support.median(ratios),
            "settled_ratio": support.median(settled),
        }
        table.add_row(
            kind,
            f"{figures[kind]['rate']:,.0f}",
            f"{figures[kind]['ratio']:.1%}",
            f"{min(ratios):.0%}–{max(ratios):.0%}",
            f"{figures[kind]['settled']:,.0f}",
            f"{figures[kind]['settled_ratio']:.1%}",
        )
    return table, figures


def _latency_table(latencies: Sequence[Latency]) -> Table:
    table = Table(
        title="latency at a fixed publishing pace (ms; ping: the broker and worker alone)"
    )
    for column in ("kind", "events/s", "events", "p50", "p90", "p99", "max"):
        table.add_column(column, justify="right")
    table.add_column("publish → transaction start p50 / p99")
    table.add_column("ping p50 / p99")
    table.add_column("load")
    for lat in latencies:
        ms = [v * 1e3 for v in lat.commit]
        started = [v * 1e3 for v in lat.started]
        pings = [v * 1e3 for v in lat.pings]
        table.add_row(
            lat.kind,
            f"{lat.rate:,.0f}",
            str(len(ms)),
            *(f"{_percentile(ms, q):.0f}" for q in (0.5, 0.9, 0.99)),
            f"{max(ms):.0f}",
            f"{_percentile(started, 0.5):.0f} / {_percentile(started, 0.99):.0f}",
            f"{_percentile(pings, 0.5):.1f} / {_percentile(pings, 0.99):.1f}",
            lat.load,
        )
    return table


def _task_runtimes(stack: Stack) -> str:
    """Tasks the workers ran by name, from their INFO log lines (count, median runtime)."""
    pattern = re.compile(r"Task (?P<name>[\w.]+)\[[0-9a-f-]+\] succeeded in (?P<s>[\d.e-]+)s")
    runtimes: dict[str, list[float]] = collections.defaultdict(list)
    for log in sorted(stack.folder.glob("worker-*.log")):
        for match in pattern.finditer(log.read_text(errors="replace")):
            runtimes[match["name"]].append(float(match["s"]))
    jobs = [
        int(match["count"])
        for log in sorted(stack.folder.glob("worker-*.log"))
        for match in _COALESCED_JOB.finditer(log.read_text(errors="replace"))
    ]
    coalesced = (
        f"; single events applied in {len(jobs)} coalesced jobs (events per job: median "
        f"{support.median(jobs):.0f}, max {max(jobs)}; {jobs.count(1)} alone)"
        if jobs
        else ""
    )
    return (
        "; ".join(
            f"{name} ×{len(values)} (median {support.median(values) * 1e3:.1f} ms, "
            f"total {sum(values):.1f} s)"
            for name, values in sorted(runtimes.items(), key=lambda item: -len(item[1]))
        )
        + coalesced
    )


#: The worker's line for a job of single-event messages applied together (tasks/coalesce.py).
_COALESCED_JOB = re.compile(r"coalesced job of (?P<count>\d+) aftersales\.ingest_event messages")


@contextmanager
def deployment(options: argparse.Namespace, console: Console) -> Iterator[tuple[Stack, Seeded]]:
    server_url = support.postgres_url(options.postgres_url)
    with ExitStack() as stack_:
        folder = Path(stack_.enter_context(tempfile.TemporaryDirectory(prefix="events-e2e-")))
        if options.keep:
            folder = Path(tempfile.mkdtemp(prefix="events-e2e-kept-"))
        (folder / "pings").mkdir()
        database = stack_.enter_context(support.throwaway_database("postgres", server_url))
        assert database.conninfo is not None
        broker_url = stack_.enter_context(support.private_redis(folder / "redis"))
        seeded = seed(database.url)
        stack = Stack(database.url, database.conninfo, broker_url, folder, options.concurrency)
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


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    cores = os.cpu_count() or 2
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--seconds",
        type=float,
        default=3.0,
        help="size each measurement to last about this long at the warm-up's rate",
    )
    sized = "per round (default: sized by --seconds; 0: skip this kind)"
    parser.add_argument("--noop", type=int, help=f"no-op tasks {sized}")
    parser.add_argument("--single", type=int, help=f"single-event messages {sized}")
    parser.add_argument("--batch", type=int, help=f"events in batches {sized}")
    parser.add_argument("--batch-size", type=int, default=100, help="events per batch message")
    parser.add_argument("--http", type=int, help=f"events over HTTP {sized}")
    parser.add_argument("--http-batch", type=int, default=100, help="events per request (≤ 100)")
    parser.add_argument("--http-clients", type=int, default=cores, help="concurrent requests")
    parser.add_argument("--workers", type=int, default=1, help="worker processes")
    support.add_concurrency_option(parser)
    parser.add_argument("--latency-seconds", type=float, default=8.0, help="per kind; 0: skip")
    parser.add_argument(
        "--latency-load", type=float, default=0.5, help="publishing pace, share of the settled rate"
    )
    parser.add_argument("--profile", type=Path, metavar="DIR", help="py-spy the pool afterwards")
    parser.add_argument(
        "--profile-on-cpu",
        action="store_true",
        help="sample only running threads (where the CPU goes), not waits",
    )
    parser.add_argument("--keep", action="store_true", help="keep the logs folder")
    parser.add_argument(
        "--postgres-url",
        help=f"server for the throwaway database (default ${support.POSTGRES_ENV} "
        f"or {support.DEFAULT_POSTGRES_URL})",
    )
    options = parser.parse_args(argv)
    kinds = [k for k in KINDS if getattr(options, k) != 0]
    warmup = {"noop": 300, "single": 60, "batch": 3 * options.batch_size, "http": 300}
    console = support.console()
    support.print_machine(console, support.machine(support.postgres_url(options.postgres_url)))
    console.print(
        f"{options.rounds} rounds of {', '.join(kinds)} (batch {options.batch_size}/message, "
        f"HTTP {options.http_batch}/request × {options.http_clients} clients); load {load()}"
    )
    wall = time.monotonic()
    drains: list[Drain] = []
    latencies: list[Latency] = []
    all_events: list[Event] = []
    profiles: list[str] = []
    with deployment(options, console) as (stack, seeded), support.progress(console) as bar:
        seeded.grow([warmup[k] for k in kinds if k != "noop"])
        units = {}
        for kind in kinds:
            calibration, events = drain(stack, kind, 0, warmup[kind], seeded, options, bar)
            all_events += events
            units[kind] = getattr(options, kind) or _sized(calibration, kind, options)
        console.print(
            "per round: " + ", ".join(f"{kind} {units[kind]}" for kind in kinds), highlight=False
        )
        seeded.grow(options.rounds * [units[k] for k in kinds if k != "noop"])
        for round_ in range(1, options.rounds + 1):
            order = kinds if round_ % 2 else list(reversed(kinds))
            for kind in order:
                result, events = drain(stack, kind, round_, units[kind], seeded, options, bar)
                drains.append(result)
                all_events += events
        # The pace is a share of what the workers sustain with the events' effects (settled/s):
        # at a share of units/s alone the relays and notifications would queue up behind.
        rates = {k: support.median([d.settled_rate for d in drains if d.kind == k]) for k in kinds}
        if options.latency_seconds:
            for kind in ("single", "batch"):
                if kind not in rates:
                    continue
                rate = options.latency_load * rates[kind]
                seeded.grow([int(rate * options.latency_seconds) + options.batch_size])
                latency = paced(
                    stack, kind, rate, options.latency_seconds, seeded, options.batch_size, bar
                )
                latencies.append(latency)
                all_events += latency.events
        if options.profile:
            options.profile.mkdir(parents=True, exist_ok=True)
            profile_units = {k: units[k] for k in ("single", "batch") if k in units}
            seeded.grow(list(profile_units.values()))
            for kind, count in profile_units.items():
                samplers: list[Sampler] = []
                start = _sampling(stack, options.profile, kind, samplers, options.profile_on_cpu)
                _, events = drain(stack, kind, 90, count, seeded, options, bar, during=start)
                all_events += events
                report = profile_report(samplers[0].files, count)
                report += "the worker's main process:\n"
                report += profile_report(samplers[0].main_files, count)
                (options.profile / f"{kind}.txt").write_text(report)
                profiles.append(f"{kind} ({count} events):\n{report}")
        problems = verify(stack, all_events, seeded)
        runtimes = _task_runtimes(stack)
    console.print(_drains_table(drains))
    summary, figures = _summary_table(drains)
    console.print(summary)
    if latencies:
        console.print(_latency_table(latencies))
    console.print(f"tasks run (worker logs): {runtimes}", highlight=False)
    for text in profiles:
        console.print(text, markup=False, highlight=False)
    checked = (
        f"{len(all_events)} events each applied once, their cases in the expected state"
        if not problems
        else "VERIFICATION FAILED: " + "; ".join(problems)
    )
    console.print(checked)
    console.print(f"{time.monotonic() - wall:.0f} s; load {load()}")
    parts = []
    if "single" in figures:
        ratio = figures["single"]["ratio"]
        parts.append(
            f"single {ratio:.1%} of no-op (target ≥ {SINGLE_TARGET:.0%}) "
            f"{'met' if ratio >= SINGLE_TARGET else 'NOT met'} "
            f"(single {figures['single']['rate']:,.0f}/s, no-op {figures['noop']['rate']:,.0f}/s)"
        )
    for kind in ("batch", "http"):
        if kind in figures:
            rate = figures[kind]["rate"]
            parts.append(
                f"{kind} {rate:,.0f} events/s (target ≥ {BATCH_TARGET:,.0f}) "
                f"{'met' if rate >= BATCH_TARGET else 'NOT met'}"
            )
    for lat in latencies:
        parts.append(
            f"{lat.kind} latency p50 {_percentile(lat.commit, 0.5) * 1e3:.0f} ms "
            f"p99 {_percentile(lat.commit, 0.99) * 1e3:.0f} ms at {lat.rate:,.0f}/s"
        )
    parts.append("verified" if not problems else "VERIFICATION FAILED")
    print(f"SUMMARY events_e2e: {'; '.join(parts)}; load {load()}")
    return 0 if not problems else 1


if __name__ == "__main__":
    raise SystemExit(main())
