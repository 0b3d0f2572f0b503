"""What ``bench/chaos_kill.py`` and ``bench/chaos_outages.py`` share: a whole deployment on
PostgreSQL and a private Redis, worker and beat processes under a supervisor, a driver that moves
a few hundred cases of mixed types by events, timers and the workers' own effects, and the
checks run at the end.

The deployment (``Deployment``): a throwaway PostgreSQL database (``bench.support``), a
``redis-server`` of its own on a free port (stopping it harms nobody), a ``FileClock`` every
process reads, and ``celery worker`` / ``celery beat`` subprocesses started the way
``aftersales worker`` / ``aftersales beat`` start them (``entrypoints.worker.worker_argv``), each
in its own process group. The workers name their PostgreSQL sessions ``aftersales-chaos-worker``
(libpq's ``application_name``) so that an outage can end theirs and only theirs.

The driver (``Driver``) plays the outside world, reacting to each case's state as read from the
database: merchants approve, reject, confirm receipt and inspect; carriers report pickups and
deliveries; buyers confirm deliveries. Everything else is the workers': pickup bookings,
refunds, and every timer once the clock is moved past it. Cases run in waves: a wave's cases are
submitted at the wave's "now"; once the event-driven ones are finished and the others wait only
for a deadline, the clock jumps 49 hours (unreviewed applications are approved by their timer)
and then 8 days (returns never shipped expire, rejections never disputed close). Each event
carries an id made of the case, its version and the event type, so a copy sent again is the same
event to the service.

The checks (``verify``), on the database and the fake payment gateway's ledger:

- every case is in a terminal state;
- the log of each case has ``seq`` 1..n with n = the case's version, each record starts where
  the previous ended, each is a row of the case type's transition table
  (``workflow.definitions.rules_for``), and the last ends in the case's state (replaying the log
  gives the state);
- no trigger appears twice in a case's history (none of the scripted paths repeats one): a
  duplicate would be an event, effect or timer applied twice;
- every fired timer produced exactly the transition at its version, and the timer-caused
  transitions are as many as the fired timers; no timer is left pending or claimed;
- the fake gateway paid at most one refund per case, a refunded case exactly one with the
  amount and reference the case records, any other case none;
- every outbox row was completed; no inbound event was dead-lettered.
"""

from __future__ import annotations

import contextlib
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from functools import partial
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
from entrypoints.worker import worker_argv
from persistence.db import make_engine, normalize_url
from persistence.tables import cases, dead_letters, outbox, timers, transitions
from tasks import producer
from tasks.app import create_app
from tasks.kick import RELAY_TASK
from workflow.clock import FileClock
from workflow.definitions import TIMER_SPECS, rules_for
from workflow.service import CaseService
from workflow.states import TERMINAL_STATES, CaseState, CaseType

ROOT = Path(__file__).resolve().parents[1]
S = CaseState

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
_TYPE_OF = {kind: case_type for kind, case_type, _ in KINDS}
#: Where the cases that wait for deadlines must be before each clock jump (the others are
#: terminal by then): before the first, the unreviewed application and the rejection; before
#: the second, the return approved by its review deadline and never shipped.
WAITING_FOR_TIMER: tuple[dict[str, CaseState], ...] = (
    {"silent": S.SUBMITTED, "rejected": S.REJECTED},
    {"silent": S.PICKUP, "rejected": S.REJECTED},
)


def free_port(first: int = 6500, last: int = 6700) -> int:
    for port in range(first, last + 1):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
            try:
                probe.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError(f"no free port in {first}..{last}")


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
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None
        self.starts = 0

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.starts += 1
        log = self.folder / f"redis-{self.starts}.log"
        self.process = subprocess.Popen(
            [
                *("redis-server", "--bind", "127.0.0.1", "--port", str(self.port)),
                *("--save", "", "--appendonly", "no", "--dir", str(self.folder)),
                *("--logfile", str(log)),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.STDOUT,
        )
        wait_until(self._answers, f"redis-server on port {self.port}", timeout=30)

    def shutdown_nosave(self) -> None:
        """``SHUTDOWN NOSAVE``: every queued and unacknowledged message is gone."""
        client = redis.Redis(port=self.port, socket_connect_timeout=2)
        with contextlib.suppress(redis.ConnectionError):
            client.shutdown(nosave=True)
        client.close()
        if self.process is not None:
            self.process.wait(timeout=30)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=30)

    def _answers(self) -> bool:
        if self.process is not None and self.process.poll() is not None:
            raise RuntimeError(f"redis-server exited with {self.process.returncode}")
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
    process: subprocess.Popen[bytes] | None = None
    starts: int = 0

    @property
    def log(self) -> Path:
        return self.folder / f"{self.name}-{self.starts}.log"

    def start(self) -> None:
        self.starts += 1
        with self.log.open("wb") as out:
            self.process = subprocess.Popen(
                self.command(self.starts),
                cwd=ROOT,
                env=self.env,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def children(self) -> list[int]:
        """The pool processes (prefork children) of this worker, from /proc."""
        if not self.alive():
            return []
        found = []
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            # pid (comm) state ppid ...: comm may hold spaces, so split after its ')'.
            if int(stat.rsplit(")", 1)[1].split()[1]) == self.pid:
                found.append(int(entry.name))
        return found

    def kill_group(self) -> None:
        """SIGKILL the process and everything it started: nothing gets to clean up."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.pid, signal.SIGKILL)
        if self.process is not None:
            self.process.wait(timeout=30)

    def stop(self) -> None:
        if not self.alive():
            return
        assert self.process is not None
        self.process.terminate()
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(timeout=20)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.pid, signal.SIGKILL)
        self.process.wait(timeout=30)

    def ready(self) -> bool:
        return "ready." in self.log.read_text(errors="replace")

    def exits(self) -> str | None:
        """Why this start of the process ended, or None while it runs."""
        if self.alive():
            return None
        text = self.log.read_text(errors="replace")
        crash = [line for line in text.splitlines() if "Unrecoverable error" in line]
        code = self.process.returncode if self.process is not None else None
        return crash[0] if crash else f"exit code {code}"


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
        for slot in self.workers + self.beats:
            if slot.alive() and slot.process is not None:
                slot.process.terminate()
        for slot in self.workers + self.beats:
            slot.stop()


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


# -- the cases and the outside world ---------------------------------------------------------------


def application(kind: str, order_id: str, now: datetime) -> dict[str, Any]:
    """An application of ``kind`` eligible at ``now`` (paid 5 days ago, delivered 2 days ago)."""
    case_type = _TYPE_OF[kind]
    base: dict[str, Any] = {
        "type": case_type,
        "order_id": order_id,
        "buyer_id": "b1",
        "merchant_id": "m1",
        "category": "clothing",
        "reason": "no_reason",
        "payment": {
            "channel": "wechat_pay",
            "amount": 19900,
            "paid_at": (now - timedelta(days=5)).isoformat(),
        },
        "delivered_at": (now - timedelta(days=2)).isoformat(),
        "items": [{"sku": "jacket", "quantity": 1, "unit_price": 19900}],
        "gifts": [],
    }
    if case_type == "repair":
        base |= {"category": "phone", "reason": "quality_issue"}
        base["items"] = [{"sku": "phone", "quantity": 1, "unit_price": 19900}]
    if case_type == "refund_only":
        base |= {"reason": "not_received", "delivered_at": None}
    return base


def _event(
    source: str,
    type: str,
    case_id: int,
    version: int,
    now: datetime,
    data: dict[str, Any],
    parcel: str | None = None,
) -> dict[str, Any]:
    document: dict[str, Any] = {
        # The same case at the same version and the same event type: the same event.
        "event_id": f"chaos-{case_id}-v{version}-{type}",
        "source": source,
        "type": type,
        "occurred_at": now.isoformat(),
        "case_id": case_id,
        "data": data,
    }
    if parcel is not None:
        document["tracking_no"] = parcel
    return document


def reactions(
    kind: str, state: CaseState, case_id: int, version: int, now: datetime
) -> list[dict[str, Any]]:
    """What the outside world sends when a case of ``kind`` is in ``state`` (maybe nothing)."""

    def merchant(type: str, **data: Any) -> dict[str, Any]:
        data = {"merchant_id": "m1", **data}
        return _event("merchant-portal", f"merchant.{type}", case_id, version, now, data)

    def carrier(type: str, parcel: str) -> dict[str, Any]:
        return _event("sf-express", f"parcel.{type}", case_id, version, now, {}, parcel)

    if kind == "silent":
        return []
    if state is S.SUBMITTED:
        if kind == "rejected":
            return [merchant("rejected", reason="worn and washed")]
        return [merchant("approved")]
    outbound = f"FX{case_id}"
    reacting: dict[CaseState, Callable[[], list[dict[str, Any]]]] = {
        S.PICKUP: lambda: [carrier("picked_up", f"SF{case_id}")],
        S.SHIPPED_BACK: lambda: [carrier("delivered", f"SF{case_id}")],
        S.RETURN_DELIVERED: lambda: [merchant("receipt_confirmed")],
        S.RECEIVED: lambda: [merchant("inspected")],
        S.SHIPPED_TO_BUYER: lambda: [carrier("delivered", outbound)],
        S.DELIVERED_TO_BUYER: lambda: [
            _event(
                "buyer-app", "buyer.delivery_confirmed", case_id, version, now, {"buyer_id": "b1"}
            )
        ],
    }
    if state is S.INSPECTED and kind in ("exchange", "repair"):
        shipped = "replacement_shipped" if kind == "exchange" else "repaired_shipped"
        return [merchant(shipped, tracking_no=outbound, carrier="SF")]
    make = reacting.get(state)
    return make() if make is not None else []


@dataclass
class Flood:
    """How the outside world misbehaves: each event sent ``1..copies`` times, and with
    probability ``reorder`` a return parcel's delivery reported before its pickup."""

    copies: int = 1
    reorder: float = 0.0
    #: Send again an event whose case has not moved this long after (s): a producer retrying
    #: what a broker outage lost. 0: never (a lost event then shows as a stuck case).
    resend_after_s: float = 0.0


@dataclass
class DriverStats:
    cases: int = 0
    events: int = 0
    copies: int = 0
    reordered: int = 0
    resent: int = 0
    waves: int = 0
    jumps: int = 0
    #: Rounds cut short because the broker was unreachable.
    send_failures: int = 0


class Driver:
    """Submits the cases wave by wave and reacts to their states until every one is terminal."""

    def __init__(
        self,
        run: Deployment,
        cases: int,
        waves: int,
        flood: Flood,
        rng: random.Random,
        on_progress: Callable[[int, int], None] = lambda done, total: None,
        stage_timeout_s: float = 240.0,
    ) -> None:
        self.run = run
        self.total = cases
        self.waves = waves
        self.flood = flood
        self.rng = rng
        self.on_progress = on_progress
        self.stage_timeout_s = stage_timeout_s
        self.stats = DriverStats()
        self.kinds: dict[int, str] = {}
        self._sent: dict[tuple[int, int], tuple[float, list[dict[str, Any]]]] = {}
        self._done = 0
        self._engine = make_engine(run.database_url)

    def drive(self, keep_going: Callable[[], bool] = lambda: False) -> None:
        """Run the waves; then more waves of the same size while ``keep_going()`` (the fault
        injector has not done its share yet)."""
        size = -(-self.total // self.waves)
        remaining = self.total
        while remaining > 0 or keep_going():
            count = min(size, remaining) if remaining > 0 else size
            self._wave(count)
            remaining -= count

    def _wave(self, count: int) -> None:
        self.stats.waves += 1
        now = self.run.clock.now()
        weights = [weight for _, _, weight in KINDS]
        names = [kind for kind, _, _ in KINDS]
        ids = []
        for _ in range(count):
            kind = self.rng.choices(names, weights)[0]
            order = f"o-chaos-{self.stats.cases}"
            case_id = self.run.service.submit(application(kind, order, now)).case.id
            assert case_id is not None
            self.kinds[case_id] = kind
            ids.append(case_id)
            self.stats.cases += 1
        for jump, waiting in zip(JUMPS, WAITING_FOR_TIMER, strict=True):
            self._until(ids, partial(self._only, waiting=waiting), "the wave")
            self.run.clock.advance(jump)
            self.stats.jumps += 1
        self._until(ids, self._all_terminal, "the wave's last deadlines")

    def _only(self, states: dict[int, CaseState], *, waiting: dict[str, CaseState]) -> bool:
        """Every case terminal, but those of a kind in ``waiting``, which are in its state."""
        return all(
            state in TERMINAL_STATES or waiting.get(self.kinds[case]) is state
            for case, state in states.items()
        )

    @staticmethod
    def _all_terminal(states: dict[int, CaseState]) -> bool:
        return all(state in TERMINAL_STATES for state in states.values())

    def _until(
        self, ids: list[int], reached: Callable[[dict[int, CaseState]], bool], what: str
    ) -> None:
        deadline = time.monotonic() + self.stage_timeout_s
        tick = time.monotonic()
        while True:
            rows = self._states(ids)
            states = {case: state for case, (state, _) in rows.items()}
            if reached(states):
                return
            if time.monotonic() > deadline:
                stuck = Counter(
                    f"{self.kinds[case]}@{state.value}"
                    for case, state in states.items()
                    if state not in TERMINAL_STATES
                )
                raise TimeoutError(
                    f"{what}: cases stuck after {self.stage_timeout_s:.0f} s: {dict(stuck)}"
                )
            for case, (state, version) in rows.items():
                if not self._react(case, state, version):
                    self.stats.send_failures += 1
                    break
            time.sleep(0.2)
            elapsed, tick = time.monotonic() - tick, time.monotonic()
            self.run.clock.advance(timedelta(seconds=elapsed * CLOCK_SPEED))

    def _states(self, ids: list[int]) -> dict[int, tuple[CaseState, int]]:
        query = sa.select(cases.c.id, cases.c.state, cases.c.version).where(cases.c.id.in_(ids))
        with self._engine.connect() as connection:
            rows = {
                row.id: (CaseState(row.state), row.version) for row in connection.execute(query)
            }
        done = sum(1 for state, _ in rows.values() if state in TERMINAL_STATES)
        finished_before = self._done_before(ids)
        self.on_progress(finished_before + done, max(self.total, self.stats.cases))
        return rows

    def _done_before(self, ids: list[int]) -> int:
        # Cases of earlier waves are all terminal when a wave starts.
        return self.stats.cases - len(ids)

    def _react(self, case: int, state: CaseState, version: int) -> bool:
        """Send what the outside world sends now for this case; False if the broker is down."""
        if state in TERMINAL_STATES:
            return True
        key = (case, version)
        sent = self._sent.get(key)
        if sent is not None:
            at, envelopes = sent
            if not self.flood.resend_after_s or time.monotonic() - at < self.flood.resend_after_s:
                return True
            if not all(self.run.send_event(envelope) for envelope in envelopes):
                return False
            self.stats.resent += len(envelopes)
            self._sent[key] = (time.monotonic(), envelopes)
            return True
        now = self.run.clock.now()
        envelopes = reactions(self.kinds[case], state, case, version, now)
        if state is S.PICKUP and envelopes and self.rng.random() < self.flood.reorder:
            # The carrier's delivery scan arrives before its pickup scan: the delivery implies
            # the pickup, and the late pickup is ignored.
            envelopes = reactions(self.kinds[case], S.SHIPPED_BACK, case, version, now) + envelopes
            self.stats.reordered += 1
        copies = [self.rng.randint(1, self.flood.copies) for _ in envelopes]
        for envelope, times in zip(envelopes, copies, strict=True):
            if not all(self.run.send_event(envelope) for _ in range(times)):
                return False  # not recorded as sent: the whole reaction is sent next round
        self._sent[key] = (time.monotonic(), envelopes)
        self.stats.events += len(envelopes)
        self.stats.copies += sum(copies) - len(copies)
        return True


# -- the checks ------------------------------------------------------------------------------------


@dataclass
class Findings:
    cases: int = 0
    terminal: int = 0
    by_state: Counter[str] = field(default_factory=Counter)
    transitions: int = 0
    log_gaps: int = 0
    replay_mismatches: int = 0
    duplicate_transitions: int = 0
    timers_fired: int = 0
    timer_mismatches: int = 0
    timers_live: int = 0
    refunds: int = 0
    refunded_fen: int = 0
    duplicate_refunds: int = 0
    refund_mismatches: int = 0
    outbox_rows: int = 0
    outbox_pending: int = 0
    outbox_republished: int = 0
    dead_letters: int = 0
    problems: list[str] = field(default_factory=list)

    @property
    def duplicates(self) -> int:
        return self.duplicate_transitions + self.duplicate_refunds + self.timer_mismatches

    @property
    def ok(self) -> bool:
        return (
            self.terminal == self.cases
            and not self.log_gaps
            and not self.replay_mismatches
            and not self.duplicates
            and not self.timers_live
            and not self.refund_mismatches
            and not self.outbox_pending
            and not self.dead_letters
        )

    def summary(self) -> str:
        """The checks' figures for a ``SUMMARY`` line."""
        return (
            f"cases={self.cases} terminal={self.terminal} transitions={self.transitions} "
            f"refunds={self.refunds} timers_fired={self.timers_fired} outbox={self.outbox_rows} "
            f"pending={self.outbox_pending} republished={self.outbox_republished} "
            f"log_gaps={self.log_gaps} replay_mismatches={self.replay_mismatches} "
            f"duplicates_found={self.duplicates}"
        )

    def problem(self, text: str) -> None:
        if len(self.problems) < 20:
            self.problems.append(text)


#: The warning ``tasks.unconfirmed`` logs when it sends producers' events again.
_RESENT = re.compile(r"events not processed [\d.]+ s after they were sent: (\d+) sent again")


def resent_from_ledger(run: Deployment) -> int:
    """How many events the service sent again from the producers' ledger (every process log
    of the run: each start of each slot has its own)."""
    return sum(
        int(match[1])
        for log in run.folder.glob("*.log")
        for match in _RESENT.finditer(log.read_text(errors="replace"))
    )


#: The worker's lines for a job of single events applied together, and for one that failed and
#: handed its messages to Celery's own path (tasks/coalesce.py).
_COALESCED = re.compile(r"coalesced job of (\d+) aftersales\.ingest_event messages")
_FELL_BACK = re.compile(r"(\d+) coalesced aftersales\.ingest_event messages failed together")


def coalesced_jobs(run: Deployment) -> tuple[int, int, int]:
    """(jobs that returned, the events they applied, jobs that failed and fell back) over every
    worker log of the run."""
    texts = [log.read_text(errors="replace") for log in run.folder.glob("*.log")]
    sizes = [int(m[1]) for text in texts for m in _COALESCED.finditer(text)]
    failed = sum(1 for text in texts for _ in _FELL_BACK.finditer(text))
    return len(sizes), sum(sizes), failed


def wait_settled(run: Deployment, timeout: float = 120) -> None:
    """Wait for every outbox row to be completed (effects of the last transitions)."""
    engine = make_engine(run.database_url)
    query = sa.select(sa.func.count()).select_from(outbox).where(outbox.c.completed_at.is_(None))

    def settled() -> bool:
        with engine.connect() as connection:
            return connection.execute(query).scalar_one() == 0

    with contextlib.suppress(TimeoutError):
        wait_until(settled, "the outbox to drain", timeout)


def verify(run: Deployment) -> Findings:
    engine = make_engine(run.database_url)
    found = Findings()
    with engine.connect() as connection:
        case_rows = {row.id: row for row in connection.execute(sa.select(cases))}
        log: dict[int, list[Any]] = {}
        for row in connection.execute(
            sa.select(transitions).order_by(transitions.c.case_id, transitions.c.seq)
        ):
            log.setdefault(row.case_id, []).append(row)
        timer_rows = list(connection.execute(sa.select(timers)))
        outbox_rows = list(connection.execute(sa.select(outbox)))
        found.dead_letters = connection.execute(
            sa.select(sa.func.count()).select_from(dead_letters)
        ).scalar_one()
    found.cases = len(case_rows)
    for case_id, row in case_rows.items():
        state = CaseState(row.state)
        found.by_state[state.value] += 1
        found.terminal += state in TERMINAL_STATES
        records = log.get(case_id, [])
        found.transitions += len(records)
        _check_log(found, case_id, row, records)
    _check_timers(found, timer_rows, log)
    _check_refunds(found, run, case_rows)
    found.outbox_rows = len(outbox_rows)
    found.outbox_pending = sum(1 for row in outbox_rows if row.completed_at is None)
    found.outbox_republished = sum(1 for row in outbox_rows if row.attempts > 1)
    return found


def _check_log(found: Findings, case_id: int, row: Any, records: list[Any]) -> None:
    if [record.seq for record in records] != list(range(1, row.version + 1)):
        found.log_gaps += 1
        found.problem(f"case {case_id}: seq {[r.seq for r in records]} vs version {row.version}")
    rules = rules_for(CaseType(row.type))
    previous: str | None = None
    for record in records:
        legal = (
            record.seq == 1 and record.trigger == "submit" and record.to_state == "submitted"
        ) or any(
            rule.trigger == record.trigger
            and record.from_state in {s.value for s in rule.sources}
            and rule.dest.value == record.to_state
            for rule in rules
        )
        if record.from_state != previous or not legal:
            found.replay_mismatches += 1
            found.problem(
                f"case {case_id}: {record.trigger} {record.from_state}->{record.to_state}"
            )
            break
        previous = record.to_state
    if previous != row.state:
        found.replay_mismatches += 1
        found.problem(f"case {case_id}: the log ends in {previous}, the case is {row.state}")
    repeated = Counter(record.trigger for record in records)
    for trigger, times in repeated.items():
        if times > 1:
            found.duplicate_transitions += times - 1
            found.problem(f"case {case_id}: {trigger} {times} times")


def _check_timers(found: Findings, timer_rows: list[Any], log: dict[int, list[Any]]) -> None:
    timer_triggers = {spec.trigger for spec in TIMER_SPECS.values()}
    fired = [row for row in timer_rows if row.status == "fired"]
    found.timers_fired = len(fired)
    found.timers_live = sum(1 for row in timer_rows if row.status in ("pending", "claimed"))
    for timer in fired:
        records = {record.seq: record for record in log.get(timer.case_id, [])}
        caused = records.get(timer.version + 1)
        if caused is None or caused.trigger != timer.trigger or caused.actor != "system":
            found.timer_mismatches += 1
            found.problem(f"timer {timer.id} ({timer.kind}) fired without its transition")
    by_timers = sum(
        1
        for records in log.values()
        for record in records
        if record.actor == "system" and record.trigger in timer_triggers
    )
    if by_timers != len(fired):
        found.timer_mismatches += abs(by_timers - len(fired))
        found.problem(f"{by_timers} timer transitions for {len(fired)} fired timers")


def _check_refunds(found: Findings, run: Deployment, case_rows: dict[int, Any]) -> None:
    paid: dict[int, list[Any]] = {}
    for entry in run.payments.ledger():
        if entry.status.value == "succeeded":
            paid.setdefault(entry.case_id, []).append(entry)
    for case_id, row in case_rows.items():
        entries = paid.get(case_id, [])
        found.refunds += len(entries)
        found.refunded_fen += sum(entry.amount for entry in entries)
        if len(entries) > 1:
            found.duplicate_refunds += len(entries) - 1
            found.problem(f"case {case_id}: {len(entries)} refunds paid")
        if row.state == S.REFUNDED.value:
            reference = (row.details or {}).get("refund_reference")
            if (
                len(entries) != 1
                or entries[0].amount != row.refund_amount
                or (entries[0].reference != reference)
            ):
                found.refund_mismatches += 1
                found.problem(f"case {case_id}: refunded, ledger {entries}")
        elif entries:
            found.refund_mismatches += 1
            found.problem(f"case {case_id}: {row.state} but paid {entries}")


def load_average() -> str:
    one, five, fifteen = os.getloadavg()
    return f"{one:.2f} {five:.2f} {fifteen:.2f}"


def findings_table(found: Findings) -> list[tuple[str, str]]:
    return [
        ("cases (terminal)", f"{found.cases} ({found.terminal})"),
        ("final states", ", ".join(f"{k} {v}" for k, v in sorted(found.by_state.items()))),
        ("transitions logged", str(found.transitions)),
        ("log gaps / replay mismatches", f"{found.log_gaps} / {found.replay_mismatches}"),
        ("timers fired (left live)", f"{found.timers_fired} ({found.timers_live})"),
        ("refunds paid (fen)", f"{found.refunds} ({found.refunded_fen})"),
        ("refund mismatches", str(found.refund_mismatches)),
        (
            "outbox rows (pending, published again)",
            f"{found.outbox_rows} ({found.outbox_pending}, {found.outbox_republished})",
        ),
        ("dead letters", str(found.dead_letters)),
        (
            "duplicates found (transitions, refunds, timers)",
            f"{found.duplicates} ({found.duplicate_transitions}, {found.duplicate_refunds}, "
            f"{found.timer_mismatches})",
        ),
    ]
