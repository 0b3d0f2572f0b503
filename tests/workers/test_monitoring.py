"""Workers as Flower and ``celery events`` see them: real processes on the test Redis.

Two ``aftersales worker`` processes on one host (a dedicated timer sweeper, ``-Q timers``, and
one for the rest, ``-Q celery``), a real Flower (``celery flower``, its HTTP API) and ``celery
events --dump``. Redis only: the embedded broker sends no events (docs/workers.md, "Monitoring").
"""

from __future__ import annotations

import json
import re
import socket
import sys
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from entrypoints.processes import ChildProcess, free_port
from persistence.db import make_engine

from .conftest import ROOT, Runtime, celery_command, wait_for
from .support import Stack, merchant, open_stack, stack_params, submit

pytestmark = pytest.mark.redis

#: The worker's line for each coalesced job of single events (tasks/coalesce.py).
_JOB = re.compile(r"coalesced job of (?P<count>\d+) aftersales\.ingest_event messages")

#: Flower answers its API without a login only with this set (flower/api/__init__.py, 2.x).
FLOWER_UNAUTHENTICATED = {"FLOWER_UNAUTHENTICATED_API": "true"}


def _cli_worker(runtime: Runtime, *args: str) -> ChildProcess:
    """``aftersales worker`` as an operator starts it: its node name is its own default."""
    command = [sys.executable, "-m", "entrypoints.cli", "worker", "-c", "1", *args]
    return runtime.spawn(command)


def _flower(runtime: Runtime, port: int) -> ChildProcess:
    command = celery_command("flower", "--address=127.0.0.1", f"--port={port}")
    log = runtime.folder / "flower.log"
    flower = ChildProcess(command, log, env={**runtime.env, **FLOWER_UNAUTHENTICATED}, cwd=ROOT)
    runtime.workers.append(flower.start())
    return flower


def _events_dump(runtime: Runtime) -> ChildProcess:
    """``celery events --dump`` on the runtime's broker, stopped with its workers."""
    command = celery_command("events", "--dump")
    dump = ChildProcess(command, runtime.folder / "events.log", env=runtime.env, cwd=ROOT).start()
    runtime.workers.append(dump)
    return dump


def _get(port: int, path: str) -> Any:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as response:
        return json.loads(response.read())


@pytest.mark.parametrize("broker", [pytest.param("redis", id="redis")])
def test_flower_lists_both_workers_of_one_host_and_the_tasks_each_ran(runtime: Runtime) -> None:
    # given two workers started with their default names on this host: a timer sweeper and one
    # for everything else (apart, so that each runs some of the pings)
    host = socket.gethostname()
    effects = _cli_worker(runtime, "-Q", "celery")
    sweeper = _cli_worker(runtime, "-Q", "timers")
    names = {f"aftersales-{effects.pid}@{host}", f"aftersales-{sweeper.pid}@{host}"}
    # and Flower watching the broker
    port = free_port()
    flower = _flower(runtime, port)
    flower.wait_port(port, timeout=45)
    # that has their heartbeats (so it listens: Redis drops events published before that)
    wait_for(
        lambda: (online := _get(port, "/api/workers?status=1")) and names <= online.keys(),
        "Flower to hear both workers' heartbeats",
    )

    # when each worker runs pings (the sweeper's through its queue)
    tokens = {uuid.uuid4().hex: "celery" for _ in range(3)}
    tokens |= {uuid.uuid4().hex: "timers" for _ in range(3)}
    ids = {
        runtime.app.send_task("aftersales.ping", args=[token], queue=queue).id: queue
        for token, queue in tokens.items()
    }

    # then Flower's task list has every ping, succeeded, on the worker of its queue
    def all_done() -> dict[str, Any] | None:
        tasks = _get(port, "/api/tasks?taskname=aftersales.ping")
        mine = {task_id: tasks.get(task_id) for task_id in ids}
        if all(task and task["state"] == "SUCCESS" for task in mine.values()):
            return mine
        return None

    done = wait_for(all_done, "Flower to list the six pings as succeeded")
    ran_on = {done[task_id]["worker"] for task_id, queue in ids.items() if queue == "celery"}
    swept_on = {done[task_id]["worker"] for task_id, queue in ids.items() if queue == "timers"}
    assert ran_on == {f"aftersales-{effects.pid}@{host}"}
    assert swept_on == {f"aftersales-{sweeper.pid}@{host}"}
    assert all(task["runtime"] is not None for task in done.values())

    # and its worker list (remote inspection) has both, apart, online by their heartbeats
    def listed() -> dict[str, Any] | None:
        # Flower asks the workers with a 1 s timeout: a busy one may answer the next time.
        found: dict[str, Any] = _get(port, "/api/workers?refresh=1")
        return found if all("stats" in found.get(name, {}) for name in names) else None

    workers = wait_for(listed, "Flower to list both workers")
    assert {workers[name]["stats"]["pid"] for name in names} == {effects.pid, sweeper.pid}

    # (online: a heartbeat within the last two periods; polled, a busy host may delay one)
    def both_online() -> bool:
        status = _get(port, "/api/workers?status=1")
        return all(status.get(name) for name in names)

    wait_for(both_online, "Flower to show both workers online")
    assert "DuplicateNodenameWarning" not in effects.output() + sweeper.output()


@pytest.mark.parametrize("broker", [pytest.param("redis", id="redis")])
def test_celery_events_shows_task_events_and_remote_control_finds_a_dispatcher(
    runtime: Runtime,
) -> None:
    # given a worker named on its command line, and ``celery events --dump`` watching
    name = f"events-{uuid.uuid4().hex[:8]}"
    worker = _cli_worker(runtime, "-n", f"{name}@%h")
    runtime.ping(worker)
    dump = _events_dump(runtime)
    host = socket.gethostname()
    # the worker's heartbeats (every 2 s) reach the dump: it has subscribed (Redis drops what
    # is published to a channel before anyone listens)
    dump.wait_log(rf"^{name}@{host} .*heartbeat", timeout=45, what="a worker heartbeat")

    # when a task runs
    task_id = runtime.app.send_task("aftersales.ping", args=[uuid.uuid4().hex]).id

    # then the dump shows it received, started and succeeded by that worker
    for event in ("received", "started", "succeeded"):
        line = dump.wait_log(rf"^{name}@{host} .*{event}.*{task_id}", timeout=45, what=event)
        assert task_id in line.group(0)
    # and ``control enable_events`` finds the dispatcher (it answered "event dispatcher
    # unavailable" when workers ran without events, heartbeats and gossip)
    replies = runtime.app.control.enable_events(reply=True, timeout=5)
    answers = [answer for reply in replies for answer in reply.values()]
    assert answers == [{"ok": "task events already enabled"}], replies
    assert worker.alive()


@pytest.fixture(params=stack_params("redis-postgres"))
def stack(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Stack]:
    broker, database_kind = request.param
    with open_stack(request, tmp_path, broker, database_kind) as opened:
        yield opened


def test_coalesced_events_show_in_celery_events_and_are_counted(stack: Stack) -> None:
    # given a prefork worker (2 pool processes: one coalesced job at a time), four cases, and
    # ``celery events --dump`` that hears the worker
    (worker,) = stack.start_workers(1, beat=False)
    cases = [submit(stack, "return_refund", f"o-ev-{n}") for n in range(4)]
    dump = _events_dump(stack.runtime)
    dump.wait_log(r"heartbeat", timeout=45, what="the worker's heartbeat")

    # when the first approval's job waits on a lock while the others arrive, then goes on
    with make_engine(stack.database_url).connect() as locker:
        locker.execute(sa.text("LOCK TABLE inbound_events IN ACCESS EXCLUSIVE MODE"))
        ids = stack.send_events(*(merchant(stack, "approved", case) for case in cases))
        for task_id in ids:
            stack.wait_log(worker, rf"Task aftersales\.ingest_event\[{task_id}\] received", task_id)
        locker.rollback()
    assert stack.outcomes(ids) == ["applied"] * 4
    jobs = [int(m["count"]) for _, text in stack.runtime.logs() for m in _JOB.finditer(text)]
    assert max(jobs) >= 2, jobs  # the three that waited went in one job

    # then the dump shows each message received, started and succeeded, as any task
    for task_id in ids:
        for event in ("received", "started", "succeeded"):
            dump.wait_log(rf"{event}.*{task_id}", timeout=45, what=f"{event} {task_id}")
    # and, once the worker stops, its pool processes have counted the four in the database
    worker.stop()
    assert stack.task_runs("aftersales.ingest_event", "succeeded") == 4
