"""The Celery runtime on real workers: configuration, delivery, and surviving ``kill -9``."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
from kombu import Connection, Exchange, Queue

import tasks.runtime
from config.settings import BrokerSettings, DatabaseSettings, Settings, WorkerSettings, sqlite_url
from entrypoints.composition import worker_app
from entrypoints.processes import ChildProcess
from entrypoints.worker import default_concurrency, default_pool
from tasks.app import TASK_MODULES, create_app, retry_countdown
from tasks.broker import SPOOL_TRANSPORT
from tasks.schedule import beat_schedule
from tasks.spool import restore_expired_claims

from .conftest import ROOT, Runtime, wait_for

SQLITE = "sqlite:////srv/aftersales/var/aftersales.db"


# -- configuration (no worker) -----------------------------------------------------------------


def test_a_failed_event_task_keeps_its_events_as_dead_letters(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # given a worker process's runtime on a database of its own
    url = sqlite_url(tmp_path / "cases.db")
    monkeypatch.setenv("AFTERSALES_DATABASE_URL", url)
    monkeypatch.setattr(tasks.runtime, "_runtime", None)
    monkeypatch.setattr(tasks.runtime, "_builder", None)
    app = worker_app(Settings(database=DatabaseSettings(url=url), policy_file=None))
    events = [
        {
            "event_id": f"e-{n}",
            "source": "sf-express",
            "type": "parcel.delivered",
            "occurred_at": "2026-11-20T10:00:00+08:00",
            "tracking_no": f"SF{n}",
        }
        for n in (1, 2)
    ]
    # when Celery reports the batch task failed for good (a bug; the message is acked)
    app.tasks["aftersales.ingest_events"].on_failure(
        RuntimeError("boom"), "task-1", (events,), {}, None
    )
    # then both events wait as dead letters naming the failure, to replay once fixed
    letters = tasks.runtime.runtime().events.dead_letters()
    assert [(letter.event_id, letter.code) for letter in letters] == [
        ("e-1", "ingest_failed"),
        ("e-2", "ingest_failed"),
    ]
    assert all("RuntimeError: boom" in letter.reason for letter in letters)
    monkeypatch.setattr(tasks.runtime, "_runtime", None)


def test_events_that_cannot_be_kept_are_logged_without_bank_account_numbers(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # given a worker whose dead-letter table cannot be written either
    url = sqlite_url(tmp_path / "cases.db")
    monkeypatch.setenv("AFTERSALES_DATABASE_URL", url)
    monkeypatch.setattr(tasks.runtime, "_runtime", None)
    monkeypatch.setattr(tasks.runtime, "_builder", None)
    app = worker_app(Settings(database=DatabaseSettings(url=url), policy_file=None))
    service = tasks.runtime.runtime().events

    def cannot_keep(*_: object) -> None:
        raise RuntimeError("database gone")

    monkeypatch.setattr(service, "keep_failed", cannot_keep)
    account = {"buyer_id": "b1", "holder": "Li", "bank": "ICBC", "account_no": "6222020200112233"}
    event = {
        "event_id": "b-1",
        "source": "buyer-app",
        "type": "buyer.bank_account_provided",
        "occurred_at": "2026-11-20T10:00:00+08:00",
        "case_id": 1,
        "data": account,
    }
    # when the task fails for good, its event logged as the last place to find it
    app.tasks["aftersales.ingest_event"].on_failure(
        RuntimeError("boom"), "task-1", (json.dumps(event),), {}, None
    )
    # then the log names the event, its account number masked
    assert "b-1" in caplog.text and "************2233" in caplog.text
    assert "6222020200112233" not in caplog.text
    monkeypatch.setattr(tasks.runtime, "_runtime", None)


@pytest.mark.parametrize(
    "broker_url", [None, "redis://127.0.0.1:6379/0"], ids=["embedded", "redis"]
)
def test_app_is_configured_for_at_least_once_json_delivery(broker_url: str | None) -> None:
    # given settings for either broker
    settings = Settings(
        database=DatabaseSettings(url=SQLITE), broker=BrokerSettings(url=broker_url)
    )
    # when the app is built
    conf = create_app(settings).conf
    # then only JSON travels, messages are acked after the task and requeued if its process dies
    assert conf.task_serializer == "json"
    assert conf.accept_content == ["json"]
    assert conf.task_acks_late is True
    assert conf.task_reject_on_worker_lost is True
    assert conf.worker_prefetch_multiplier == 1
    assert conf.task_ignore_result is True
    assert conf.broker_connection_retry_on_startup is True
    # and no task can stay unacknowledged past the visibility timeout
    timeout = conf.broker_transport_options["visibility_timeout"]
    assert timeout == 3600
    assert conf.task_time_limit + conf.aftersales_retry_backoff_max_s < timeout
    assert conf.task_soft_time_limit < conf.task_time_limit


def test_timer_sweeps_have_a_queue_of_their_own_that_every_worker_reads() -> None:
    app = create_app(Settings(database=DatabaseSettings(url=SQLITE)))
    route = app.amqp.router.route({}, "aftersales.sweep_timers")["queue"]
    other = app.amqp.router.route({}, "aftersales.ingest_event")["queue"]
    # sweeps do not queue behind the effects the timers they fire have queued
    assert (route.name, route.routing_key) == ("timers", "timers")
    assert (other.name, other.routing_key) == ("celery", "celery")
    # and a worker started without -Q consumes both
    assert sorted(app.amqp.queues) == ["celery", "timers"]


def test_embedded_broker_lives_beside_the_sqlite_database() -> None:
    # given no broker URL
    settings = Settings(database=DatabaseSettings(url=SQLITE), broker=BrokerSettings(url=None))
    # when the app is built
    app = create_app(settings)
    # then the spool transport keeps its files in <var>/broker, beat its state in <var>
    assert app.conf.broker_transport == SPOOL_TRANSPORT
    assert app.conf.broker_transport_options["data_folder"] == "/srv/aftersales/var/broker"
    assert app.conf.beat_schedule_filename == "/srv/aftersales/var/celerybeat-schedule"
    assert app.conf.worker_enable_remote_control is False
    assert default_pool(app) == "threads"


@pytest.mark.parametrize("url", ["amqp://guest:guest@mq:5672/shop1", "AMQPS://mq/shop1 "])
def test_rabbitmq_broker_gets_publisher_confirms_and_prefork(url: str) -> None:
    # given a RabbitMQ URL (any case, stray blanks)
    settings = Settings(database=DatabaseSettings(url=SQLITE), broker=BrokerSettings(url=url))
    # when the app is built
    app = create_app(settings)
    # then kombu's pyamqp transport carries it, every publish waits for the server's confirm,
    # no Redis option rides along, and the worker forks a pool
    assert app.conf.broker_transport is None
    assert app.conf.broker_transport_options == {"confirm_publish": True}
    assert default_pool(app) == "prefork"
    # and the ledger (a Redis structure) is not scheduled
    assert all("unconfirmed" not in entry["task"] for entry in app.conf.beat_schedule.values())


def test_the_worker_event_loop_wakes_every_second_to_see_a_stop_request() -> None:
    # given the app's consumer bootsteps and a worker event loop (kombu's Hub)
    from types import SimpleNamespace

    from kombu.asynchronous import Hub

    from tasks.prompt_shutdown import WAKE_EVERY_S, WakeEverySecond

    app = create_app(Settings(database=DatabaseSettings(url=SQLITE)))
    assert WakeEverySecond in app.steps["consumer"]
    hub = Hub()
    parent = SimpleNamespace(hub=hub)
    step = WakeEverySecond(parent)
    # when the step starts, then the loop has a timer due every second (so ``poll`` returns)
    step.start(parent)
    (entry,) = hub.timer.queue
    assert WAKE_EVERY_S == 1.0 and hub.fire_timers() <= WAKE_EVERY_S
    # and stopping the step cancels it
    step.stop(parent)
    assert entry.entry.canceled
    hub.close()


def test_the_producer_helper_asks_rabbitmq_for_confirms() -> None:
    # given the producer helper's app for a RabbitMQ URL and for a Redis one
    from tasks import producer

    amqp = producer._app("amqp://guest:guest@mq:5672/shop1")
    redis_app = producer._app("redis://127.0.0.1:6379/9", "p:")
    # then only the RabbitMQ one waits for publisher confirms
    assert amqp.conf.broker_transport_options == {"confirm_publish": True}
    assert redis_app.conf.broker_transport_options == {"global_keyprefix": "p:"}


def test_redis_broker_gets_its_key_prefix_and_prefork() -> None:
    settings = Settings(
        database=DatabaseSettings(url=SQLITE),
        broker=BrokerSettings(url="redis://127.0.0.1:6379/3", key_prefix="shop1:"),
    )
    app = create_app(settings)
    assert app.conf.broker_transport is None
    assert app.conf.broker_transport_options["global_keyprefix"] == "shop1:"
    assert default_pool(app) == "prefork"


def test_workers_run_two_processes_per_core_on_postgresql_and_two_on_sqlite() -> None:
    postgres = Settings(database=DatabaseSettings(url="postgresql+psycopg://db/aftersales"))
    assert default_concurrency(postgres) == 2 * (os.cpu_count() or 1)
    assert default_concurrency(Settings(database=DatabaseSettings(url=SQLITE))) == 2


def test_tasks_are_registered_under_stable_names() -> None:
    app = create_app(Settings(database=DatabaseSettings(url=SQLITE)))
    assert {"aftersales.ping", "aftersales.noop"} <= set(app.tasks)
    assert set(TASK_MODULES) <= set(app.conf.include)


def test_visibility_timeout_must_exceed_time_limit_plus_retry_cap() -> None:
    with pytest.raises(ValueError, match="visibility_timeout"):
        Settings(
            broker=BrokerSettings(visibility_timeout_s=600),
            worker=WorkerSettings(task_time_limit_s=300, retry_backoff_max_s=300),
        )


def test_beat_schedules_only_defined_tasks_with_their_periods() -> None:
    worker = WorkerSettings(timer_sweep_interval_s=2.0)
    schedule = beat_schedule(worker, defined={"aftersales.sweep_timers"})
    assert schedule == {
        "aftersales.sweep_timers": {
            "task": "aftersales.sweep_timers",
            "schedule": 2.0,
            "options": {"expires": 6.0},
        }
    }


def test_beat_resends_unconfirmed_events_only_on_redis() -> None:
    # Producers keep a ledger of their events on Redis only (tasks/producer.py).
    worker = WorkerSettings(event_resend_interval_s=7.0)
    defined = {"aftersales.resend_unconfirmed_events"}
    assert beat_schedule(worker, defined) == {}
    assert beat_schedule(worker, defined, redis=True) == {
        "aftersales.resend_unconfirmed_events": {
            "task": "aftersales.resend_unconfirmed_events",
            "schedule": 7.0,
            "options": {"expires": 21.0},
        }
    }


def test_retry_countdown_doubles_up_to_the_cap() -> None:
    app = create_app(
        Settings(
            database=DatabaseSettings(url=SQLITE), worker=WorkerSettings(retry_backoff_max_s=10)
        )
    )
    task = app.tasks["aftersales.noop"]
    countdowns = []
    for retries in range(6):
        task.push_request(retries=retries)
        countdowns.append(retry_countdown(task))
        task.pop_request()
    assert countdowns == [2.0, 4.0, 8.0, 10.0, 10.0, 10.0]


def test_importing_the_task_modules_creates_no_app() -> None:
    # given a fresh interpreter; when every tasks module but the CLI entry is imported
    code = (
        "import celery._state as s, importlib\n"
        "for m in ['tasks', 'tasks.app', 'tasks.spool', 'tasks.health', 'tasks.broker',"
        " 'tasks.schedule', 'tasks.runtime', 'tasks.publish', 'tasks.ledger',"
        " 'tasks.resender', 'entrypoints.worker', 'entrypoints.composition']:\n"
        "    importlib.import_module(m)\n"
        "print(len([a for a in s._apps]))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    # then no Celery app exists
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "0"


# -- real workers ------------------------------------------------------------------------------


def test_ping_runs_on_a_real_worker(runtime: Runtime) -> None:
    # given a worker subprocess (started: it already answered one ping)
    worker = runtime.start_worker()
    # when another ping is sent
    proof = runtime.ping(worker)
    # then a process of that worker ran it, not this test process
    assert proof["pid"] != os.getpid()


@pytest.mark.parametrize("broker", [pytest.param("amqp", marks=pytest.mark.amqp)])
def test_a_rabbitmq_producer_without_our_code_is_heard_by_a_worker_started_later(
    runtime: Runtime,
) -> None:
    # given a producer that knows only the broker and the task name, and no worker yet (so no
    # queue declared by us)
    from celery import Celery

    assert runtime.vhost is not None
    producer = Celery("someone-else", broker=runtime.vhost.url)
    token = uuid.uuid4().hex
    # when it sends the task by name
    producer.send_task("aftersales.ping", args=[token])
    producer.close()
    # then RabbitMQ keeps the message (Celery's producer declared the queue first: a message
    # to a queue nobody declared would be dropped as unroutable)
    assert runtime.vhost.queues()["celery"] == (1, 0)
    # and a worker started afterwards runs it
    runtime.start_worker()
    wait_for(lambda: (runtime.ping_dir / token).exists(), "the foreign ping")


@pytest.mark.parametrize("broker", [pytest.param("amqp", marks=pytest.mark.amqp)])
def test_a_publish_rabbitmq_refuses_raises_instead_of_vanishing(runtime: Runtime) -> None:
    from kombu.exceptions import OperationalError

    from tasks import producer

    # given a default queue that refuses every message (a policy: length 0, reject-publish), as
    # a full queue or a server short of memory or disk would
    vhost = runtime.vhost
    assert vhost is not None
    vhost.set_policy("refuse-all", "^celery$", '{"max-length": 0, "overflow": "reject-publish"}')
    # when the service's app sends a task, then the publish raises (publisher confirms: the
    # server's nack); without confirms it returns and the message is gone
    with pytest.raises(OperationalError):
        runtime.app.send_task("aftersales.ping", args=[uuid.uuid4().hex])
    # and so does the producer helper's
    envelope = producer.make_envelope("sf-express", "parcel.delivered", tracking_no="SF1")
    with pytest.raises(OperationalError):
        producer.publish_event(envelope, vhost.url)
    assert vhost.ready("celery") == 0


@pytest.mark.parametrize("broker", [pytest.param("redis", marks=pytest.mark.redis)])
def test_a_producer_without_our_code_reaches_the_worker(runtime: Runtime, redis_url: str) -> None:
    # given a worker, and a producer that knows only the broker and the task name
    runtime.start_worker()
    from celery import Celery

    producer = Celery("someone-else", broker=redis_url)
    producer.conf.broker_transport_options = {
        "global_keyprefix": runtime.settings.broker.key_prefix
    }
    token = uuid.uuid4().hex
    # when it sends the task by name
    producer.send_task("aftersales.ping", args=[token])
    producer.close()
    # then the worker runs it
    wait_for(lambda: (runtime.ping_dir / token).exists(), "the foreign ping")


def test_a_stock_kombu_filesystem_producer_reaches_the_spool(tmp_path: Path) -> None:
    # given the embedded broker's folders
    app = create_app(
        Settings(
            database=DatabaseSettings(url=f"sqlite:///{tmp_path}/var/a.db"),
            worker=WorkerSettings(ping_dir=tmp_path / "pings"),
        )
    )
    spool = Path(app.conf.broker_transport_options["data_folder"])
    # when kombu's own filesystem transport (no code of ours) publishes a Celery message
    options = {
        "data_folder_out": str(spool / "ready"),
        "data_folder_in": str(spool / "ready"),
        "control_folder": str(spool / "control"),
    }
    (spool / "ready").mkdir(parents=True)
    with Connection("filesystem://", transport_options=options) as connection:
        exchange = Exchange("celery", type="direct")
        queue = Queue("celery", exchange, routing_key="celery")
        producer = connection.Producer(serializer="json")
        task_id = uuid.uuid4().hex
        producer.publish(
            [["token123"], {}, {}],
            exchange=exchange,
            routing_key="celery",
            declare=[queue],
            headers={"lang": "py", "task": "aftersales.ping", "id": task_id, "retries": 0},
        )
    # then our transport fetches it for the app's consumer
    with app.connection_for_read() as connection:
        message = connection.SimpleQueue("celery").get(timeout=5)
        assert message.headers["task"] == "aftersales.ping"
        message.ack()
    assert list((spool / "claimed").iterdir()) == []


def _attempts(folder: Path, token: str) -> list[Path]:
    return sorted(folder.glob(f"{token}.started.*"))


def _hold(runtime: Runtime) -> tuple[str, Path]:
    token = uuid.uuid4().hex
    runtime.app.send_task("aftersales_test.hold", args=[str(runtime.folder), token])
    return token, runtime.folder


def test_task_survives_kill9_of_the_pool_process_running_it(runtime: Runtime) -> None:
    # given a prefork worker running a task that holds until released
    runtime.start_worker(pool="prefork")
    token, folder = _hold(runtime)
    first = wait_for(lambda: _attempts(folder, token), "the task to start")[0]
    child_pid = int(first.name.split(".")[2])
    # when the pool process running it is killed with SIGKILL
    os.kill(child_pid, signal.SIGKILL)
    (folder / f"{token}.release").touch()
    # then the worker requeues the message (reject_on_worker_lost) and the task completes
    wait_for(lambda: list(folder.glob(f"{token}.done.*")), "the task to complete")
    assert len(_attempts(folder, token)) == 2


def test_task_survives_kill9_of_the_whole_worker(runtime: Runtime) -> None:
    # given a worker (its default pool) running a task that holds until released
    first_worker = runtime.start_worker()
    token, folder = _hold(runtime)
    wait_for(lambda: _attempts(folder, token), "the task to start")
    # when the worker and all its processes are killed with SIGKILL, and a new one starts
    first_worker.kill()
    (folder / f"{token}.release").touch()
    if runtime.vhost is not None:
        # (RabbitMQ requeued the message at once: the dead worker's connection closed)
        vhost = runtime.vhost
        wait_for(lambda: vhost.queues()["celery"] == (1, 0), "RabbitMQ to requeue the message")
    started = time.monotonic()
    runtime.start_worker(ready=False)
    # then the unacknowledged message is delivered again and the task completes: at once on the
    # embedded broker (its claimer is dead) and on RabbitMQ (see above), after the visibility
    # timeout on Redis
    wait_for(lambda: list(folder.glob(f"{token}.done.*")), "the redelivered task to complete")
    assert len(_attempts(folder, token)) == 2
    if runtime.broker == "redis":
        assert time.monotonic() - started >= runtime.settings.broker.visibility_timeout_s / 2


def _run_all(runtime: Runtime) -> ChildProcess:
    """`aftersales run`'s function (worker and beat) in a process of its own, once a ping ran
    and beat started beside the worker."""
    code = (
        "from entrypoints.composition import load_settings\n"
        "from entrypoints.worker import run_all\n"
        "run_all(load_settings(), concurrency=2)\n"
    )
    worker = runtime.spawn([sys.executable, "-c", code])
    runtime.ping(worker)
    wait_for(lambda: "beat: Starting" in worker.output(), "beat to start")
    return worker


@pytest.mark.parametrize("broker", ["embedded"])
def test_run_all_starts_a_worker_with_beat(runtime: Runtime) -> None:
    # given `aftersales run`'s function in a process of its own, when a ping is sent, then it
    # runs, and beat started beside the worker
    worker = _run_all(runtime)
    # and SIGTERM stops the whole thing
    worker.terminate()
    assert worker.wait(timeout=30) == 0
    assert json.loads(next(runtime.ping_dir.iterdir()).read_text())["pid"] == worker.pid


def _children(pid: int) -> set[int]:
    text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    return {int(child) for child in text.split()}


def _running(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie nobody reaped has stopped: init may be a shell here)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return False
    state = next(line for line in status.splitlines() if line.startswith("State:"))
    return "zombie" not in state and "dead" not in state


@pytest.mark.skipif(not Path("/proc/self/task").exists(), reason="reads children from /proc")
@pytest.mark.parametrize("broker", ["embedded"])
def test_a_beat_inside_a_killed_worker_stops_by_itself(runtime: Runtime) -> None:
    # given `aftersales run`'s function (worker and beat) in a process of its own
    worker = _run_all(runtime)
    children = _children(worker.pid)
    assert children, "beat runs in a child process of the worker"

    # when the worker is killed with SIGKILL, which lets it stop nothing
    os.kill(worker.pid, signal.SIGKILL)
    worker.wait(timeout=30)

    # then its beat notices and stops (before: it went on sending a sweep every second)
    wait_for(lambda: not any(_running(child) for child in children), "the orphans to stop")
    assert "is gone; stopping" in worker.output()


def test_spool_gives_back_claims_of_dead_processes_and_expired_ones(tmp_path: Path) -> None:
    # given three claims: a live process's fresh one, a dead process's, a live one too old
    claimed, ready = tmp_path / "claimed", tmp_path / "ready"
    claimed.mkdir()
    ready.mkdir()
    done = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        check=True,
        capture_output=True,
        text=True,
    )
    dead_pid, live_pid = int(done.stdout), os.getpid()
    now = time.time_ns()
    timeout = 60 * 10**9
    (claimed / f"{now:020d}~{live_pid}~1_a.celery.msg").touch()
    (claimed / f"{now:020d}~{dead_pid}~2_b.celery.msg").touch()
    (claimed / f"{now - 2 * timeout:020d}~{live_pid}~3_c.celery.msg").touch()
    # when the claims are checked
    moved = restore_expired_claims(claimed, ready, timeout, now)
    # then only the live, fresh claim stays claimed; the others are ready again, names intact
    assert moved == 2
    assert sorted(p.name for p in ready.iterdir()) == ["2_b.celery.msg", "3_c.celery.msg"]
    assert [p.name.split("~")[2] for p in claimed.iterdir()] == ["1_a.celery.msg"]


@pytest.mark.parametrize("broker", ["embedded"])
def test_run_beat_sends_the_timer_sweep_every_period(runtime: Runtime) -> None:
    # given `aftersales beat`'s function in a process of its own, in a folder with no var/ yet
    code = (
        "from entrypoints.composition import load_settings\n"
        "from entrypoints.worker import run_beat\n"
        "run_beat(load_settings())\n"
    )
    beat = runtime.spawn([sys.executable, "-c", code])
    sent = "Sending due task aftersales.sweep_timers"
    # then it sends a sweep each second (the default period)
    wait_for(lambda: beat.output().count(sent) >= 2, "two sweeps sent")
    spool = Path(runtime.app.conf.broker_transport_options["data_folder"])
    assert any(p.name.endswith(".timers.msg") for p in (spool / "ready").iterdir())
