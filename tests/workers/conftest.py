"""Real Celery workers in subprocesses, on Redis, RabbitMQ and the embedded broker; no eager
mode.

``runtime`` gives a test its own broker namespace (a spool folder in ``tmp_path``, a Redis key
prefix deleted afterwards, or a RabbitMQ virtual host deleted afterwards), the settings for it,
an app to send with, and ``start_worker()``. Every wait polls for an effect with a deadline;
workers get SIGTERM, then SIGKILL, at teardown; their logs are attached to a failing test's
report.

Redis tests are marked ``redis``, RabbitMQ tests ``amqp`` (``AFTERSALES_TEST_AMQP_URL``, default
``amqp://guest:guest@127.0.0.1:5672//``; virtual hosts are made with ``rabbitmqctl``, so as root
or the ``rabbitmq`` user). They are skipped when their server does not answer, unless
``AFTERSALES_REQUIRE_POSTGRES`` is set (CI), where a missing server fails them.
"""

from __future__ import annotations

import json
import os
import sys
import uuid
from collections.abc import Callable, Generator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import redis
from celery import Celery

from config.settings import BrokerSettings, DatabaseSettings, Settings, WorkerSettings, sqlite_url
from entrypoints.processes import ChildProcess, stop_all, wait_until
from entrypoints.worker import Pool, worker_argv
from tasks.app import create_app

from .rabbitmq import AMQP_ENV, DEFAULT_AMQP_URL, RabbitUnavailable, Vhost, check_server

REDIS_ENV = "AFTERSALES_TEST_REDIS_URL"
REQUIRE_ENV = "AFTERSALES_REQUIRE_POSTGRES"
DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"

ROOT = Path(__file__).resolve().parents[2]
TESTS = ROOT / "tests"

#: Short enough that a test sees Redis hand a dead worker's message on (it waits this long);
#: the time limit and retry cap stay below it, as ``Settings`` requires.
VISIBILITY_TIMEOUT_S = 8
TASK_TIME_LIMIT_S = 5
RETRY_CAP_S = 2

#: Upper bound for anything a test waits for (s); a healthy run needs a fraction of it.
DEADLINE_S = 45.0


def wait_for(
    condition: Callable[[], Any], what: str, timeout: float = DEADLINE_S, every: float = 0.05
) -> Any:
    """Poll ``condition`` until it returns something truthy, and return that; fail at timeout."""
    try:
        return wait_until(condition, what, timeout, every)
    except TimeoutError as timed_out:
        pytest.fail(str(timed_out))


def celery_command(*args: str) -> list[str]:
    """``celery`` on the project's app (``entrypoints.celery_app``), run by this interpreter,
    followed by ``args``."""
    return [sys.executable, "-m", "celery", "-A", "entrypoints.celery_app", *args]


@dataclass
class Runtime:
    """A broker namespace of one test, with what it takes to run workers on it."""

    broker: str
    settings: Settings
    env: dict[str, str]
    folder: Path
    app: Celery
    #: The test's own RabbitMQ virtual host (``amqp`` only).
    vhost: Vhost | None = None
    workers: list[ChildProcess] = field(default_factory=list)

    @property
    def ping_dir(self) -> Path:
        return Path(self.app.conf.aftersales_ping_dir)

    def command(self, pool: Pool | None = None, *, beat: bool = False) -> list[str]:
        index = len(self.workers)
        argv = worker_argv(
            self.app,
            concurrency=2,
            loglevel="INFO",
            pool=pool,
            beat=beat,
            hostname=f"test{index}-{uuid.uuid4().hex[:6]}@%h",
        )
        return celery_command(*argv, "--include=workers.probe_tasks")

    def spawn(self, command: list[str]) -> ChildProcess:
        log = self.folder / f"worker-{len(self.workers)}.log"
        worker = ChildProcess(command, log, env=self.env, cwd=ROOT).start()
        self.workers.append(worker)
        return worker

    def start_worker(self, pool: Pool | None = None, *, ready: bool = True) -> ChildProcess:
        """A worker subprocess; with ``ready``, returns once it has run a ping."""
        worker = self.spawn(self.command(pool))
        if ready:
            self.ping(worker)
        return worker

    def ping(self, worker: ChildProcess | None = None) -> dict[str, Any]:
        """Send ``aftersales.ping`` and wait for its proof file; the proof's JSON."""
        token = uuid.uuid4().hex
        self.app.send_task("aftersales.ping", args=[token])
        proof = self.ping_dir / token

        def done() -> bool:
            if worker is not None and not worker.alive():
                pytest.fail(f"worker exited with {worker.returncode} before the ping ran")
            return proof.exists()

        wait_for(done, f"ping {token} to run")
        return dict(json.loads(proof.read_text()))

    def logs(self) -> list[tuple[str, str]]:
        return [(f"worker log {w.log.name}", w.output()) for w in self.workers if w.log.exists()]


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    report = yield
    runtime = getattr(item, "_worker_runtime", None)
    if report.failed and isinstance(runtime, Runtime):
        for title, text in runtime.logs():
            report.sections.append((title, text[-20_000:]))
    return report


@pytest.fixture(scope="session")
def redis_url() -> str:
    url = os.environ.get(REDIS_ENV, DEFAULT_REDIS_URL)
    client = redis.Redis.from_url(url, socket_connect_timeout=2, socket_timeout=2)
    try:
        client.ping()
    except redis.RedisError as error:
        message = f"Redis at {url} does not answer ({error}); set {REDIS_ENV}"
        if os.environ.get(REQUIRE_ENV):
            pytest.fail(message)
        pytest.skip(message)
    finally:
        client.close()
    return url


@pytest.fixture(scope="session")
def amqp_server_url() -> str:
    """The RabbitMQ server of the tests (its default virtual host), once it answered and
    ``rabbitmqctl`` can manage it."""
    url = os.environ.get(AMQP_ENV, DEFAULT_AMQP_URL)
    try:
        check_server(url)
    except RabbitUnavailable as error:
        message = f"{error}; set {AMQP_ENV} to a local RabbitMQ and run as root"
        if os.environ.get(REQUIRE_ENV):
            pytest.fail(message)
        pytest.skip(message)
    return url


@pytest.fixture(
    params=[
        pytest.param("embedded", id="embedded"),
        pytest.param("redis", id="redis", marks=pytest.mark.redis),
        pytest.param("amqp", id="amqp", marks=pytest.mark.amqp),
    ]
)
def broker(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def runtime(broker: str, tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Runtime]:
    database_url = sqlite_url(tmp_path / "var" / "aftersales.db")
    key_prefix = ""
    broker_url: str | None = None
    if broker == "redis":
        broker_url = request.getfixturevalue("redis_url")
        key_prefix = f"aftersales-test:{uuid.uuid4().hex}:"
    vhost: Vhost | None = None
    if broker == "amqp":
        vhost = Vhost.create(request.getfixturevalue("amqp_server_url"))
        broker_url = vhost.url
    env = {
        **os.environ,
        "AFTERSALES_DATABASE_URL": database_url,
        "AFTERSALES_BROKER_VISIBILITY_TIMEOUT_S": str(VISIBILITY_TIMEOUT_S),
        "AFTERSALES_TASK_TIME_LIMIT_S": str(TASK_TIME_LIMIT_S),
        "AFTERSALES_RETRY_BACKOFF_MAX_S": str(RETRY_CAP_S),
        "AFTERSALES_BROKER_KEY_PREFIX": key_prefix,
        "AFTERSALES_PING_DIR": str(tmp_path / "pings"),
        "PYTHONPATH": os.pathsep.join([str(ROOT), str(TESTS)]),
    }
    env.pop("AFTERSALES_BROKER_URL", None)
    if broker_url:
        env["AFTERSALES_BROKER_URL"] = broker_url
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
    )
    app = create_app(settings)
    runtime = Runtime(broker, settings, env, tmp_path, app, vhost=vhost)
    request.node._worker_runtime = runtime
    try:
        yield runtime
    finally:
        stop_all(runtime.workers)
        app.close()
        if broker_url and key_prefix:
            delete_keys(broker_url, key_prefix)
        if vhost is not None:
            vhost.delete()


def delete_keys(url: str, prefix: str) -> None:
    """Delete the test's broker keys (nothing when its own Redis server is gone already)."""
    client = redis.Redis.from_url(url, socket_connect_timeout=2)
    try:
        keys = list(client.scan_iter(match=f"{prefix}*", count=500))
        if keys:
            client.delete(*keys)
    except redis.RedisError:
        pass
    finally:
        client.close()
