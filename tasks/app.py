"""``create_app``: the Celery app, built from typed settings when a process starts.

No module creates an app at import time. Task modules define their tasks with
``@shared_task(name="aftersales.<name>", bind=True)``; ``create_app`` imports them, so every
process that builds an app (worker, beat, a producer in the CLI) knows the same tasks, and the
stable names let other services ``send_task("aftersales.ingest_event", args=[event])`` with no
code of ours.
"""

from __future__ import annotations

import importlib
from typing import Any

from celery import Celery, Task
from kombu.entity import Queue

from config.settings import Settings, WorkerSettings
from tasks.broker import BrokerConfig, broker_config, var_dir
from tasks.coalesce import COALESCE_MAX_KEY
from tasks.consumer import CONSUMER_PATH
from tasks.health import PING_DIR_KEY

# Imported for its signal handler: a beat inside a worker stops when the worker is gone.
from tasks.orphaned_beat import stop_when_orphaned as _beat_watch  # noqa: F401
from tasks.prompt_shutdown import WakeEverySecond
from tasks.schedule import beat_schedule

# Imported for its signal handlers: every process running tasks counts them (task_stats).
from tasks.task_stats import stats as _task_stats  # noqa: F401

#: Modules holding ``@shared_task`` definitions; add each new one here.
TASK_MODULES: tuple[str, ...] = (
    "tasks.health",
    "tasks.timers",
    "tasks.outbox",
    "tasks.effects",
    "tasks.events",
    "tasks.unconfirmed",
)

#: The queue of every task but the timer sweep (Celery's own default name, so producers that
#: know nothing of ours reach it).
DEFAULT_QUEUE = "celery"
#: The timer sweeps' queue (see ``celery_config``).
TIMERS_QUEUE = "timers"
SWEEP_TASK = "aftersales.sweep_timers"

#: The ``app.conf`` key holding ``Settings.worker.retry_backoff_max_s`` for ``retry_countdown``.
RETRY_CAP_KEY = "aftersales_retry_backoff_max_s"
#: The file in ``<var>`` where beat keeps each entry's last run (so a restart does not re-send).
BEAT_SCHEDULE_FILE = "celerybeat-schedule"


def create_app(settings: Settings) -> Celery:
    """A configured app. The tasks it runs read the services from ``tasks.runtime``, which the
    composition root installs (``entrypoints.composition.worker_app``)."""
    worker = settings.worker
    broker = broker_config(settings)
    var = var_dir(settings.database.url)

    app = Celery("aftersales")
    app.conf.update(celery_config(broker, worker))
    app.conf.update(
        {
            "include": list(TASK_MODULES),
            "beat_schedule_filename": str(var / BEAT_SCHEDULE_FILE),
            PING_DIR_KEY: str(worker.ping_dir or var / "worker-pings"),
            RETRY_CAP_KEY: worker.retry_backoff_max_s,
            COALESCE_MAX_KEY: worker.event_coalesce_max,
        }
    )
    # A warm shutdown starts within a second of SIGTERM on RabbitMQ too (tasks/prompt_shutdown).
    app.steps["consumer"].add(WakeEverySecond)
    for module in TASK_MODULES:
        importlib.import_module(module)
    app.conf.beat_schedule = beat_schedule(worker, app.tasks.keys(), redis=broker.is_redis)
    return app


def celery_config(broker: BrokerConfig, worker: WorkerSettings) -> dict[str, Any]:
    """The Celery settings that do not depend on where files live."""
    return {
        "broker_url": broker.url,
        "broker_transport": broker.transport,
        "broker_transport_options": broker.transport_options,
        # A worker started before Redis keeps retrying instead of exiting.
        "broker_connection_retry_on_startup": True,
        # Producers in other languages and services send JSON; nothing may arrive as pickle.
        "task_serializer": "json",
        "result_serializer": "json",
        "accept_content": ["json"],
        # Ack after the task returns and requeue when the process running it dies: a message
        # is lost only if the task itself decides so. Tasks must therefore be idempotent.
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        # One message in hand per process: with acks_late a prefetched message waits behind a
        # slow task, unacknowledged, instead of going to an idle worker.
        "worker_prefetch_multiplier": 1,
        # Tasks report through the database; nobody waits on a result.
        "task_ignore_result": True,
        "result_backend": None,
        # Kept below the visibility timeout (Settings checks): a task still running when
        # the broker gives its message to another worker would run twice at once.
        "task_time_limit": worker.task_time_limit_s,
        "task_soft_time_limit": max(1, worker.task_time_limit_s * 9 // 10),
        # How long the pool waits for a dead child's result before failing its task with
        # WorkerLostError (and so requeueing it). It must end before the time limit, or the dead
        # child's task is failed as "time limit exceeded" and acked: lost. Default 10 s.
        "worker_lost_wait": min(10.0, worker.task_time_limit_s / 2),
        # Running tasks go on after a lost broker connection. Cancelling them (Celery 6's
        # default) terminates their pool children, and the worker then dies when it reconnects:
        # "Unrecoverable error: ValueError('file descriptor is None')" re-registering the
        # terminated child (celery/celery#9250, open; seen in bench/chaos_outages.py). Going on
        # may run a task twice (its ack is lost, the broker redelivers it): tasks are idempotent.
        "worker_cancel_long_running_tasks_on_connection_loss": False,
        # Celery's consumer shuts the worker down instead of reconnecting when Redis goes away
        # while a task runs (celery 5.7.0 + kombu 5.7.0); tasks/consumer.py has the why and fix.
        "worker_consumer": CONSUMER_PATH,
        # Timer sweeps have a queue of their own. In one queue they waited behind the effects
        # the timers they fired had queued (100,000 due at once: 2,500 notifications ahead of
        # every sweep, which expired unrun; bench/timers_scale.py). A worker reads its queues in
        # turn (kombu's Redis channel rotates them at every fetch), so a sweep is picked up
        # after at most one effect per pool process. Every worker consumes both by default;
        # ``aftersales worker -Q timers`` makes a dedicated sweeper.
        "task_default_queue": DEFAULT_QUEUE,
        # Routing keys of their own: two queues bound with one key would each get every message.
        "task_queues": [
            Queue(DEFAULT_QUEUE, routing_key=DEFAULT_QUEUE),
            Queue(TIMERS_QUEUE, routing_key=TIMERS_QUEUE),
        ],
        "task_routes": {SWEEP_TASK: {"queue": TIMERS_QUEUE}},
        # Task events (received, started, succeeded with its runtime, failed, retried) and, as
        # ``entrypoints.worker`` leaves heartbeats on, ``worker-heartbeat`` every 2 s: what Flower
        # and ``celery events`` show. Without them ``control enable_events`` answers "event
        # dispatcher unavailable" (celery/worker/control.py: the Events bootstep builds no
        # dispatcher when task events, heartbeats and gossip are all off). Events are fanout
        # messages; on the embedded broker nothing would remove the queue of a monitor that
        # died (kombu's filesystem transport keeps its binding in ``control/``), so every later
        # event would pile up there as a file: off there, like remote control.
        "worker_send_task_events": worker.task_events and not broker.embedded,
        # No ``task-sent`` events from producers (the relay, the API, the CLI): one more broker
        # message per task sent, and producers outside this code base would not send them
        # anyway; a task shows from ``task-received`` on.
        "task_send_sent_event": False,
        # The embedded broker carries no broadcasts (nothing would clean up a dead worker's
        # control queue); ``celery inspect`` needs Redis.
        "worker_enable_remote_control": not broker.embedded,
        "timezone": "UTC",
        "enable_utc": True,
    }


def retry_countdown(task: Task, base_s: float = 2.0) -> float:
    """Exponential backoff for ``task.retry(countdown=...)``, capped at the configured maximum.

    The cap keeps a retried message's wait plus its run inside the visibility timeout; a
    countdown is for retrying a failed side effect, never a business timer.
    """
    cap = float(task.app.conf.get(RETRY_CAP_KEY, 600))
    return float(min(base_s * 2 ** int(task.request.retries or 0), cap))
