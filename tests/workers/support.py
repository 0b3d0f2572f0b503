"""A whole deployment per test for the end-to-end and fault tests: a database, a broker, real
worker (and beat) subprocesses, and a shared simulation clock.

``open_stack`` builds on ``conftest.Runtime`` (same worker command line, logs attached to a
failing test's report, SIGTERM then SIGKILL at teardown) and adds what those tests need:

- the database of the stack: a SQLite file, or a throwaway PostgreSQL database migrated to head
  (``AFTERSALES_TEST_POSTGRES_URL``, as in ``tests/integration``);
- a ``FileClock`` every process reads, so a test moves the workers' "now" forward by days;
- fast beat periods, and fake gateways without latency unless a test asks for it;
- a ``CaseService`` in the test process on the same database, to submit cases and read them;
- helpers that wait for a state, for a task's outcome (read from the worker logs: Celery logs
  each task's return value), and for every outbox row to be completed.

Every wait polls with ``wait_for``; nothing sleeps to synchronise.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import uuid
from collections.abc import Collection, Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import redis
import sqlalchemy as sa
from integration.conftest import POSTGRES_ENV, REQUIRE_POSTGRES_ENV, _throwaway_postgres
from sqlalchemy.engine import make_url
from sqlalchemy.pool import NullPool

from adapters.fake_gateways import FakeNotifier, FakePaymentGateway, LedgerEntry, Notification
from config.settings import BrokerSettings, DatabaseSettings, Settings, WorkerSettings, sqlite_url
from entrypoints.composition import build_event_service, build_service
from entrypoints.processes import ChildProcess, free_port, redis_server_command, stop_all
from entrypoints.samples import import_orders_for
from persistence.db import dispose_engine, make_engine, normalize_url
from persistence.migrate import upgrade
from persistence.tables import cases, outbox, timers
from persistence.task_stats import read_totals
from tasks.app import create_app
from tasks.kick import RELAY_TASK
from workflow.clock import FileClock
from workflow.events.ingestion import EventService
from workflow.model import DeadLetter
from workflow.orders_service import OrderService
from workflow.service import CaseService
from workflow.states import CaseState

from .conftest import (
    DEADLINE_S,
    RETRY_CAP_S,
    ROOT,
    TASK_TIME_LIMIT_S,
    TESTS,
    VISIBILITY_TIMEOUT_S,
    Runtime,
    celery_command,
    delete_keys,
    wait_for,
)
from .rabbitmq import Vhost

#: Where a test's own ``redis-server`` listens: apart from the shared one (6379) and the bench's.
REDIS_PORTS = (6390, 6490)

#: The simulation's first instant: 10:00 in Shanghai, two days after the sample delivery.
T0 = datetime(2026, 11, 20, 2, 0, tzinfo=UTC)

#: Beat periods (s) of the timer sweep and the outbox relay: a timer fires, and a lost relay kick
#: is made up for, within a fraction of a second.
SWEEP_INTERVAL_S = 0.25
RELAY_INTERVAL_S = 0.5

FAKES = ("carrier", "payment", "shipper", "notifier")

#: Celery's log line for a task that returned: ``Task <name>[<id>] succeeded in 0.01s: 'applied'``.
_SUCCEEDED = re.compile(r"Task [\w.]+\[(?P<id>[0-9a-f-]+)\] succeeded in [\d.e-]+s: (?P<value>.*)")
_READY = re.compile(r"\bready\.\s*$", re.MULTILINE)


#: The production deployments: a server broker with PostgreSQL (``stack_params`` ids).
SERVER_STACKS = ("redis-postgres", "amqp-postgres")


def stack_params(*only: str) -> list[Any]:
    """The deployments a test runs on: Redis with PostgreSQL, RabbitMQ with PostgreSQL, the
    embedded broker with SQLite (``only`` names a subset by id)."""
    skip_postgres: list[Any] = []
    if not os.environ.get(POSTGRES_ENV) and not os.environ.get(REQUIRE_POSTGRES_ENV):
        skip_postgres.append(
            pytest.mark.skip(
                reason=f"PostgreSQL tests need {POSTGRES_ENV}, e.g. "
                "postgresql://postgres@127.0.0.1:5432/test"
            )
        )
    postgres = [pytest.mark.postgres, *skip_postgres]
    params = [
        pytest.param(
            ("redis", "postgres"), id="redis-postgres", marks=[pytest.mark.redis, *postgres]
        ),
        pytest.param(("amqp", "postgres"), id="amqp-postgres", marks=[pytest.mark.amqp, *postgres]),
        pytest.param(("embedded", "sqlite"), id="embedded-sqlite"),
    ]
    return [param for param in params if not only or param.id in only]


@contextlib.contextmanager
def database(kind: str, folder: Path) -> Iterator[str]:
    """A database nobody else uses, at the newest schema: a SQLite file or a PostgreSQL one."""
    if kind == "sqlite":
        url = sqlite_url(folder / "var" / "aftersales.db")
        upgrade(url)
        try:
            yield url
        finally:
            dispose_engine(url)
        return
    server_url = os.environ.get(POSTGRES_ENV)
    if not server_url:
        pytest.fail(f"{REQUIRE_POSTGRES_ENV} is set but {POSTGRES_ENV} is not")
    with _throwaway_postgres(normalize_url(server_url)) as url:
        upgrade(url)
        yield url


# -- the stack ------------------------------------------------------------------------------


@dataclass
class Stack:
    """One test's deployment. ``runtime`` sends tasks and owns the processes."""

    runtime: Runtime
    database_url: str
    clock: FileClock
    service: CaseService
    events: EventService
    payments: FakePaymentGateway
    _beats: int = 0

    @property
    def folder(self) -> Path:
        return self.runtime.folder

    # -- processes ---------------------------------------------------------------------------
    def start_workers(self, count: int = 2, *, beat: bool = True) -> list[ChildProcess]:
        """``count`` workers (the first with beat inside when ``beat``), once all are ready."""
        workers = [self.start_worker(beat=beat and index == 0) for index in range(count)]
        self.wait_ready(*workers)
        return workers

    def start_worker(self, *, beat: bool = False) -> ChildProcess:
        """A worker subprocess, not waited for; ``beat`` runs the scheduler inside it."""
        command = self.runtime.command()
        if beat:
            command += ["--beat", f"--schedule={self._beat_file()}"]
        return self.runtime.spawn(command)

    def start_beat(self) -> ChildProcess:
        """A stand-alone scheduler (what ``aftersales beat`` runs), with its own state file."""
        command = celery_command("beat", "--loglevel=INFO", f"--schedule={self._beat_file()}")
        return self.runtime.spawn(command)

    def _beat_file(self) -> Path:
        # Each scheduler its own state file in the test's folder: on PostgreSQL the default lies
        # in the checkout's var/, which two beats (or two test runs) would share.
        self._beats += 1
        folder = self.folder / f"beat-{self._beats}"
        folder.mkdir()
        return folder / "celerybeat-schedule"

    def wait_log(self, process: ChildProcess, pattern: str, what: str) -> re.Match[str]:
        """Wait for a line matching ``pattern`` in the process's log; the match."""
        regex = re.compile(pattern, re.MULTILINE)

        def found() -> re.Match[str] | None:
            return regex.search(process.output())

        match: re.Match[str] = wait_for(found, what)
        return match

    def wait_ready(self, *workers: ChildProcess) -> None:
        def ready() -> bool:
            for worker in workers:
                if not worker.alive():
                    pytest.fail(f"{worker.log.name} exited with {worker.returncode}")
            return all(_READY.search(worker.output()) for worker in workers)

        wait_for(ready, f"{len(workers)} worker(s) to be ready")

    # -- sending -----------------------------------------------------------------------------
    def send_event(self, envelope: Mapping[str, Any]) -> str:
        """Queue one event the way producers do; the id of its task."""
        result = self.runtime.app.send_task("aftersales.ingest_event", args=[dict(envelope)])
        return str(result.id)

    def send_events(self, *envelopes: Mapping[str, Any]) -> list[str]:
        return [self.send_event(envelope) for envelope in envelopes]

    def returned(self) -> dict[str, str]:
        """Task id -> the return value a worker logged for it, for every task that returned."""
        return {
            match["id"]: match["value"].strip().strip("'\"")
            for _, text in self.runtime.logs()
            for match in _SUCCEEDED.finditer(text)
        }

    def outcomes(self, task_ids: list[str], what: str = "the events") -> list[str]:
        """Wait for every task to return; their return values, in the order given."""

        def all_done() -> list[str] | None:
            returned = self.returned()
            done = [returned[task_id] for task_id in task_ids if task_id in returned]
            return done if len(done) == len(task_ids) else None

        return list(wait_for(all_done, f"{what} to be processed"))

    # -- the clock ---------------------------------------------------------------------------
    def now(self) -> datetime:
        return self.clock.now()

    def advance(self, delta: timedelta) -> datetime:
        """Move every process's "now" forward."""
        return self.clock.advance(delta)

    # -- reading -----------------------------------------------------------------------------
    def state(self, case_id: int) -> CaseState:
        return self.service.get(case_id).case.state

    def wait_states(self, expected: Mapping[int, CaseState], timeout: float = DEADLINE_S) -> None:
        """Wait until every case is in its state; fail naming the ones that are not."""

        def reached() -> bool:
            return all(self.state(case_id) is state for case_id, state in expected.items())

        try:
            wait_for(reached, "the cases' states", timeout=timeout)
        except pytest.fail.Exception:
            actual = {case_id: self.state(case_id).value for case_id in expected}
            wanted = {case_id: state.value for case_id, state in expected.items()}
            pytest.fail(f"cases did not reach {wanted}; they are in {actual}")

    def wait_state(self, case_id: int, state: CaseState, timeout: float = DEADLINE_S) -> None:
        self.wait_states({case_id: state}, timeout)

    def history(self, case_id: int) -> list[tuple[str, str, str]]:
        """(trigger, actor, state reached) of every transition of the case, in order."""
        return [
            (record.trigger, record.actor, record.to_state.value)
            for record in self.service.history(case_id)
        ]

    def triggers(self, case_id: int) -> list[str]:
        return [trigger for trigger, _, _ in self.history(case_id)]

    def timer_rows(self, case_id: int | None = None) -> list[sa.Row[Any]]:
        query = sa.select(timers).order_by(timers.c.id)
        if case_id is not None:
            query = query.where(timers.c.case_id == case_id)
        with make_engine(self.database_url).connect() as connection:
            return list(connection.execute(query).all())

    def fired_timers(self, case_id: int) -> list[str]:
        """Kinds of the case's timers that fired, in the order they were armed."""
        return [row.kind for row in self.timer_rows(case_id) if row.status == "fired"]

    def outbox_rows(self) -> list[sa.Row[Any]]:
        with make_engine(self.database_url).connect() as connection:
            return list(connection.execute(sa.select(outbox).order_by(outbox.c.id)).all())

    def pending_outbox(self) -> int:
        return sum(1 for row in self.outbox_rows() if row.completed_at is None)

    def wait_outbox_completed(self, timeout: float = DEADLINE_S) -> None:
        """Wait until a consumer completed every outbox row written so far."""
        wait_for(lambda: self.pending_outbox() == 0, "every outbox row to be completed", timeout)

    def in_flight(self) -> int:
        """Outbox rows published to the broker whose consumer has not completed them."""
        rows = self.outbox_rows()
        return sum(1 for row in rows if row.published_at is not None and row.completed_at is None)

    @contextlib.contextmanager
    def case_locked(self, case_id: int) -> Iterator[None]:
        """Hold the case's row lock (PostgreSQL): reads go on, a transition's write waits."""
        lock = sa.select(cases.c.id).where(cases.c.id == case_id).with_for_update()
        with make_engine(self.database_url).connect() as connection:
            connection.execute(lock)
            try:
                yield
            finally:
                connection.rollback()

    def ledger(self, case_id: int) -> list[LedgerEntry]:
        """The fake payment gateway's records for the case (its own table, across processes)."""
        return self.payments.ledger(case_id)

    def notifications(self) -> list[Notification]:
        """What the fake notifier delivered (its own table, across processes)."""
        return FakeNotifier(self.database_url).sent()

    def dead_letters(self) -> list[DeadLetter]:
        return self.events.dead_letters()

    def task_runs(self, task: str, outcome: str) -> int:
        """How many runs of ``task`` ended in ``outcome`` (``succeeded``, ``failed`` ...), as the
        workers counted them in the database (persistence/task_stats.py)."""
        with make_engine(self.database_url).connect() as connection:
            totals = read_totals(connection)
        return sum(
            count
            for (counted_task, counted_outcome, _), (count, _) in totals.items()
            if (counted_task, counted_outcome) == (task, outcome)
        )


@contextlib.contextmanager
def open_stack(
    request: pytest.FixtureRequest,
    tmp_path: Path,
    broker: str,
    database_kind: str,
    *,
    broker_url: str | None = None,
    env: Mapping[str, str] | None = None,
) -> Iterator[Stack]:
    """A deployment for one test; its processes are stopped and its broker keys deleted after.

    ``broker`` is ``embedded``, ``redis`` (``broker_url``, default the shared test Redis under
    a key prefix of the test's own) or ``amqp`` (``broker_url``, default a virtual host of the
    test's own on the test RabbitMQ, deleted after it); ``env`` adds or overrides the
    processes' ``AFTERSALES_*``.
    """
    key_prefix = ""
    vhost: Vhost | None = None
    if broker == "redis":
        broker_url = broker_url or str(request.getfixturevalue("redis_url"))
        key_prefix = f"aftersales-test:{uuid.uuid4().hex}:"
    elif broker == "amqp":
        if broker_url is None:
            vhost = Vhost.create(str(request.getfixturevalue("amqp_server_url")))
            request.addfinalizer(vhost.delete)
            broker_url = vhost.url
    else:
        broker_url = None
    clock_file = tmp_path / "clock"
    clock = FileClock(str(clock_file))
    clock.set(T0)
    with database(database_kind, tmp_path) as database_url:
        process_env = _process_env(database_url, broker_url, key_prefix, clock_file, tmp_path)
        process_env.update(env or {})
        settings = Settings(
            database=DatabaseSettings(url=database_url),
            broker=BrokerSettings(
                url=broker_url, visibility_timeout_s=VISIBILITY_TIMEOUT_S, key_prefix=key_prefix
            ),
            worker=WorkerSettings(
                task_time_limit_s=TASK_TIME_LIMIT_S,
                retry_backoff_max_s=RETRY_CAP_S,
                ping_dir=tmp_path / "pings",
            ),
            clock_file=clock_file,
            policy_file=None,
        )
        app = create_app(settings)
        runtime = Runtime(broker, settings, process_env, tmp_path, app, vhost=vhost)
        request.node._worker_runtime = runtime
        service = build_service(settings, clock, outbox_written=lambda: app.send_task(RELAY_TASK))
        stack = Stack(
            runtime,
            database_url,
            clock,
            service,
            build_event_service(settings, service),
            FakePaymentGateway(database_url),
        )
        try:
            yield stack
        finally:
            stop_all(runtime.workers)
            app.close()
            if broker_url and key_prefix:
                delete_keys(broker_url, key_prefix)


def _process_env(
    database_url: str, broker_url: str | None, key_prefix: str, clock_file: Path, folder: Path
) -> dict[str, str]:
    # Nothing of the caller's own AFTERSALES_* settings (a policy file, fake failure rates) may
    # leak into the workers: the stack says everything.
    env = {key: value for key, value in os.environ.items() if not key.startswith("AFTERSALES_")}
    env.update(
        {
            "AFTERSALES_DATABASE_URL": database_url,
            "AFTERSALES_CLOCK_FILE": str(clock_file),
            "AFTERSALES_BROKER_VISIBILITY_TIMEOUT_S": str(VISIBILITY_TIMEOUT_S),
            "AFTERSALES_TASK_TIME_LIMIT_S": str(TASK_TIME_LIMIT_S),
            "AFTERSALES_RETRY_BACKOFF_MAX_S": str(RETRY_CAP_S),
            "AFTERSALES_BROKER_KEY_PREFIX": key_prefix,
            "AFTERSALES_TIMER_SWEEP_INTERVAL_S": str(SWEEP_INTERVAL_S),
            "AFTERSALES_OUTBOX_RELAY_INTERVAL_S": str(RELAY_INTERVAL_S),
            "AFTERSALES_PING_DIR": str(folder / "pings"),
            "PYTHONPATH": os.pathsep.join([str(ROOT), str(TESTS)]),
        }
    )
    for fake in FAKES:
        env[f"AFTERSALES_FAKE_{fake.upper()}_LATENCY_MS"] = "0"
    if broker_url:
        env["AFTERSALES_BROKER_URL"] = broker_url
    return env


# -- cases and events --------------------------------------------------------------------------


def application(case_type: str, order_id: str, **overrides: Any) -> dict[str, Any]:
    """An application of ``case_type`` that is eligible at ``T0`` (a ¥199 jacket with a gift for
    returns and exchanges, a phone for repairs, an undelivered order for refund-only)."""
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
            "paid_at": "2026-11-15T10:00:00+08:00",
        },
        "delivered_at": "2026-11-18T15:00:00+08:00",
        "items": [{"sku": "jacket", "quantity": 1, "unit_price": 19900}],
        "gifts": [{"sku": "scarf", "quantity": 1, "value": 500}],
    }
    if case_type == "repair":
        base |= {"category": "phone", "reason": "quality_issue", "gifts": []}
        base["items"] = [{"sku": "phone", "quantity": 1, "unit_price": 19900}]
    if case_type == "refund_only":
        base |= {"reason": "not_received", "delivered_at": None, "gifts": []}
    return base | overrides


def submit(stack: Stack, case_type: str, order_id: str, **overrides: Any) -> int:
    """Submit in the test process (same database and clock as the workers); the case id."""
    app = application(case_type, order_id, **overrides)
    service = stack.service
    import_orders_for(OrderService(service.uow_factory, service.clock, service.policy), [app])
    case_id = service.submit(app).case.id
    assert case_id is not None
    return case_id


def envelope(
    stack: Stack,
    source: str,
    type: str,
    case_id: int,
    *,
    event_id: str | None = None,
    tracking_no: str | None = None,
    data: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """An event as a producer sends it, happening at the simulation's "now"."""
    document: dict[str, Any] = {
        "event_id": event_id or f"{type}-{uuid.uuid4().hex[:12]}",
        "source": source,
        "type": type,
        "occurred_at": stack.now().isoformat(),
        "case_id": case_id,
        "data": dict(data or {}),
    }
    if tracking_no is not None:
        document["tracking_no"] = tracking_no
    return document


def merchant(stack: Stack, type: str, case_id: int, **data: Any) -> dict[str, Any]:
    return envelope(
        stack, "merchant-portal", f"merchant.{type}", case_id, data={"merchant_id": "m1", **data}
    )


def buyer(stack: Stack, type: str, case_id: int, **data: Any) -> dict[str, Any]:
    return envelope(stack, "buyer-app", f"buyer.{type}", case_id, data={"buyer_id": "b1", **data})


def carrier(stack: Stack, type: str, case_id: int, tracking_no: str, **data: Any) -> dict[str, Any]:
    return envelope(
        stack, "sf-express", f"parcel.{type}", case_id, tracking_no=tracking_no, data=data
    )


# -- a Redis server of the test's own -----------------------------------------------------------


class RedisServer:
    """``redis-server`` on a free port with CI's flags, in a folder of the test: a test may shut
    it down and start it again without touching the shared server."""

    def __init__(self, folder: Path, port: int | None = None) -> None:
        self.folder = folder
        self.folder.mkdir(parents=True, exist_ok=True)
        self.port = port or free_port(*REDIS_PORTS)
        self.process: ChildProcess | None = None
        self.starts = 0
        self._moves = 0

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        """Start the server (again) on its port, and wait until it answers."""
        self.starts += 1
        self._spawn()
        wait_for(self._answers, f"redis-server on port {self.port} to answer")

    def _spawn(self) -> None:
        log = self.folder / f"redis-{self.starts}.log"
        command = redis_server_command(self.port, self.folder, log)
        self.process = ChildProcess(command, self.folder / f"redis-{self.starts}.out").start()

    def freeze_with_queued(self, queue: str, ignore: Collection[str] = ()) -> bool:
        """Pause every write (``CLIENT PAUSE ... WRITE``: BRPOP and LPUSH wait, reads go on) and
        say whether messages of tasks other than ``ignore`` are waiting in ``queue`` (its Redis
        key, with the broker's key prefix); unpaused again if none are. A frozen server keeps
        its queue until ``shutdown_nosave``: no worker can drain it in between."""
        client = redis.Redis(port=self.port, socket_connect_timeout=2)
        try:
            client.execute_command("CLIENT", "PAUSE", int(DEADLINE_S * 1000), "WRITE")
            # kombu keeps a list per priority step: the queue's own name and name + separator.
            keys = [queue, *client.scan_iter(match=f"{queue}\x06\x16*")]
            tasks = [
                json.loads(message)["headers"]["task"]
                for key in keys
                for message in client.lrange(key, 0, -1)
            ]
            if any(task not in ignore for task in tasks):
                return True
            client.execute_command("CLIENT", "UNPAUSE")
            return False
        finally:
            client.close()

    def shutdown_nosave(self) -> None:
        """``SHUTDOWN NOSAVE``: every queued and unacknowledged message is gone."""
        client = redis.Redis(port=self.port, socket_connect_timeout=2)
        with contextlib.suppress(redis.ConnectionError):
            client.shutdown(nosave=True)
        client.close()
        if self.process is not None:
            self.process.wait(timeout=DEADLINE_S)

    def stop(self) -> None:
        if self.process is not None:
            self.process.stop(grace_s=10)

    def _answers(self) -> bool:
        if self.process is not None and not self.process.alive():
            if self.starts == 1 and self._moves < 5:
                # Someone took the port between free_port() and the bind: take another.
                self._moves += 1
                self.port = free_port(*REDIS_PORTS)
                self._spawn()
                return False
            pytest.fail(f"redis-server exited with {self.process.returncode}")
        client = redis.Redis(port=self.port, socket_connect_timeout=0.5)
        try:
            return bool(client.ping())
        except redis.RedisError:
            return False
        finally:
            client.close()


# -- PostgreSQL connections dropped ----------------------------------------------------------------

#: ``application_name`` of the workers' PostgreSQL connections in ``drop_worker_connections``
#: tests: the test process's own connections (it submits and reads) are left alone.
WORKER_APPLICATION = "aftersales-worker"


def tag_worker_connections(stack: Stack) -> None:
    """Make the workers started from now on name their PostgreSQL connections
    ``WORKER_APPLICATION`` (libpq's ``application_name``, passed through the URL's query)."""
    url = make_url(stack.database_url).update_query_dict({"application_name": WORKER_APPLICATION})
    stack.runtime.env["AFTERSALES_DATABASE_URL"] = url.render_as_string(hide_password=False)


def drop_worker_connections(database_url: str) -> int:
    """``pg_terminate_backend`` on every connection the workers hold to this test's own
    database (and to no other); how many there were. The server ends each session at once,
    inside a transaction or idle in a pool, as a server restart or a network cut would."""
    server = sa.create_engine(
        normalize_url(database_url), isolation_level="AUTOCOMMIT", poolclass=NullPool
    )
    query = sa.text(
        "SELECT count(*) FILTER (WHERE pg_terminate_backend(pid)) FROM pg_stat_activity"
        " WHERE datname = current_database() AND application_name = :application"
        " AND pid <> pg_backend_pid()"
    )
    try:
        with server.connect() as connection:
            return int(connection.execute(query, {"application": WORKER_APPLICATION}).scalar_one())
    finally:
        server.dispose()
