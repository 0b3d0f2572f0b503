"""The Celery processes, as functions the CLI calls: ``aftersales worker | beat | run``.

Each builds its app from the settings it is given and then blocks until the process is told to
stop (SIGTERM or Ctrl-C: a warm shutdown that lets running tasks finish and requeues the rest).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from config.settings import Settings
from entrypoints.composition import worker_app

if TYPE_CHECKING:
    # Only the functions that start a process load Celery (``worker_app``): every other
    # ``aftersales`` command starts without it.
    from celery import Celery

Pool = Literal["prefork", "threads", "solo"]

# Gossip (every worker consuming every other worker's events, for elections and clock sync) and
# mingle (asking the other workers for revoked ids at start-up) are worker-to-worker traffic that
# nothing here uses: gossip grows with the square of the workers, and Flower and ``celery events``
# need neither. Heartbeats stay on (Flower marks a worker offline without them), except on the
# embedded broker, which carries no broadcasts (``tasks.app.celery_config``).
_QUIET = ["--without-gossip", "--without-mingle"]


def default_hostname() -> str:
    """A node name unique to this process: ``aftersales-<pid>@<host>``.

    Celery's default, ``celery@<host>``, is the same for every worker on a machine: two of them
    trip ``DuplicateNodenameWarning``, and Flower, ``celery events`` and ``celery inspect`` show
    them as one. The pid tells the operator which process it is. ``%h`` is Celery's own
    placeholder for the host name, expanded by the worker.
    """
    return f"aftersales-{os.getpid()}@%h"


def default_pool(app: Celery) -> Pool:
    """``prefork`` on Redis; ``threads`` on the embedded broker.

    On a broker kombu polls (the embedded one), Celery drives prefork children through one shared
    queue whose read lock an idle child holds while it waits. A child killed then (the OOM killer,
    ``kill -9``) takes the lock with it and the worker stops running tasks for good: 12 of 20
    child kills on polled brokers wedged the worker, 0 of 4 on Redis, whose pool gives each child
    its own pipe (docs/workers.md). Threads have no child to lose, and our tasks wait on the
    database, not the CPU. (Threads ignore time limits: tasks bound their own waits.)
    """
    embedded = app.conf.broker_transport == "tasks.spool:Transport"
    return "threads" if embedded else "prefork"


def worker_argv(
    app: Celery,
    *,
    concurrency: int,
    loglevel: str,
    pool: Pool | None = None,
    beat: bool = False,
    hostname: str | None = None,
    queues: str | None = None,
) -> list[str]:
    """The ``celery worker`` arguments ``run_worker`` and ``run_all`` use (tests reuse them).
    Without ``hostname`` Celery names the worker ``celery@<host>``: a process starting workers
    gives each a name of its own (``run_worker`` gives ``default_hostname()``)."""
    argv = [
        "worker",
        f"--loglevel={loglevel}",
        f"--concurrency={concurrency}",
        f"--pool={pool or default_pool(app)}",
        *_QUIET,
    ]
    if hostname:
        argv.append(f"--hostname={hostname}")
    if not app.conf.worker_send_task_events:
        # No event dispatcher where events are off (the embedded broker): heartbeats are events.
        argv.append("--without-heartbeat")
    if queues:
        argv.append(f"--queues={queues}")
    if beat:
        argv += ["--beat", f"--schedule={_beat_schedule_file(app)}"]
    return argv


def default_concurrency(settings: Settings) -> int:
    """Pool processes when none is asked for.

    Two per core on PostgreSQL: an event or timer task waits on the database for about half
    its run (round trips, the commit's flush), so one process per core leaves the cores idle
    (docs/adr/0008, benchmark 2: single events at 49% of the no-op rate with 2 processes on 2
    cores, 65% with 4). Two on SQLite: it has one writer at a time, and more processes would only
    queue on its lock.
    """
    if settings.database.is_sqlite:
        return 2
    return 2 * (os.cpu_count() or 1)


def run_worker(
    settings: Settings,
    concurrency: int | None = None,
    loglevel: str = "INFO",
    pool: Pool | None = None,
    queues: str | None = None,
    hostname: str | None = None,
) -> None:
    """A worker consuming every task queue (or only ``queues``, comma-separated); blocks.
    ``hostname`` is its node name (default ``default_hostname()``)."""
    _work(settings, concurrency, loglevel, pool, hostname, queues=queues)


def run_beat(settings: Settings, loglevel: str = "INFO") -> None:
    """The scheduler sending the periodic tasks; run exactly one per deployment."""
    app = worker_app(settings)
    app.start(["beat", f"--loglevel={loglevel}", f"--schedule={_beat_schedule_file(app)}"])


def run_all(
    settings: Settings,
    concurrency: int | None = None,
    loglevel: str = "INFO",
    pool: Pool | None = None,
    hostname: str | None = None,
) -> None:
    """Worker and beat in one command for a single machine (``aftersales run``).

    Beat runs inside the worker (``--beat``: a child process it starts and stops), so there is one
    thing to start and stop; it is why only one ``run`` may be started per deployment. Several
    machines run ``aftersales worker`` each and one ``aftersales beat``.
    """
    _work(settings, concurrency, loglevel, pool, hostname, beat=True)


def _work(
    settings: Settings,
    concurrency: int | None,
    loglevel: str,
    pool: Pool | None,
    hostname: str | None,
    *,
    queues: str | None = None,
    beat: bool = False,
) -> None:
    """``celery worker`` on the app of ``settings``, blocking; concurrency and node name default
    to ``default_concurrency`` and ``default_hostname()``."""
    app = worker_app(settings)
    argv = worker_argv(
        app,
        concurrency=concurrency or default_concurrency(settings),
        loglevel=loglevel,
        pool=pool,
        beat=beat,
        hostname=hostname or default_hostname(),
        queues=queues,
    )
    app.worker_main(argv)


def _beat_schedule_file(app: Celery) -> Path:
    """Beat's state file, its folder created: beat cannot start where ``var/`` does not exist."""
    path = Path(app.conf.beat_schedule_filename)
    path.parent.mkdir(parents=True, exist_ok=True)
    return path
