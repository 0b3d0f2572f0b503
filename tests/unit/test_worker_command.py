"""The ``celery worker`` command line the ``aftersales worker`` and ``run`` commands build: events
and heartbeats where a broker carries them, and a node name of the process's own."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from celery import Celery

from config.settings import BrokerSettings, DatabaseSettings, Settings, WorkerSettings, sqlite_url
from entrypoints.worker import default_hostname, worker_argv
from tasks.app import create_app


def _app(tmp_path: Path, broker_url: str | None, task_events: bool = True) -> Celery:
    settings = Settings(
        database=DatabaseSettings(url=sqlite_url(tmp_path / "var" / "a.db")),
        broker=BrokerSettings(url=broker_url),
        worker=WorkerSettings(task_events=task_events),
    )
    return create_app(settings)


@pytest.mark.parametrize(
    ("broker_url", "task_events", "events", "heartbeats"),
    [
        ("redis://127.0.0.1:6379/0", True, True, True),
        ("redis://127.0.0.1:6379/0", False, False, False),
        (None, True, False, False),  # the embedded broker carries no broadcasts
    ],
)
def test_events_and_heartbeats_go_where_the_broker_carries_them(
    tmp_path: Path, broker_url: str | None, task_events: bool, events: bool, heartbeats: bool
) -> None:
    # given an app on that broker
    app = _app(tmp_path, broker_url, task_events)
    # when the worker's command line is built
    argv = worker_argv(app, concurrency=2, loglevel="INFO")
    # then task events and heartbeats are on together, gossip and mingle always off
    assert app.conf.worker_send_task_events is events
    assert app.conf.task_send_sent_event is False
    assert ("--without-heartbeat" not in argv) is heartbeats
    assert {"--without-gossip", "--without-mingle"} <= set(argv)
    app.close()


def test_a_worker_is_named_after_its_process_unless_named(tmp_path: Path) -> None:
    app = _app(tmp_path, "redis://127.0.0.1:6379/0")
    assert default_hostname() == f"aftersales-{os.getpid()}@%h"
    assert not any(
        arg.startswith("--hostname") for arg in worker_argv(app, concurrency=1, loglevel="INFO")
    )
    named = worker_argv(app, concurrency=1, loglevel="INFO", hostname="sweeper@%h")
    assert "--hostname=sweeper@%h" in named
    app.close()
