"""The services the tasks call, built once per worker process by the composition root.

The tasks never wire anything: the module Celery loads (``entrypoints/celery_app.py``, or
``aftersales worker``) installs a builder with ``install``, and ``runtime()`` calls it on first
use. Celery's prefork pool forks children from the main worker process; database engines and
connection pools must not cross a fork, so the built runtime is forgotten in every new child
(``worker_process_init``) and built again there, from the builder inherited with the fork.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from celery.signals import worker_process_init

from adapters.fake_gateways import FakeGateways
from config.settings import WorkerSettings
from persistence.task_stats import SqlTaskStats
from tasks.resender import UnconfirmedEvents
from workflow.clock import Clock
from workflow.effects import EffectService
from workflow.events.ingestion import EventService
from workflow.relay import OutboxRelay
from workflow.service import CaseService


@dataclass
class Runtime:
    worker: WorkerSettings
    clock: Clock
    cases: CaseService
    events: EventService
    effects: EffectService
    relay: OutboxRelay
    gateways: FakeGateways
    #: The producers' ledger of unconfirmed events: on a Redis broker only.
    unconfirmed: UnconfirmedEvents | None = None
    #: Where this process adds its task counts and durations (``tasks.task_stats``).
    task_stats: SqlTaskStats | None = None


_builder: Callable[[], Runtime] | None = None
_runtime: Runtime | None = None


def install(builder: Callable[[], Runtime]) -> None:
    """Make ``builder`` the way this process (and the pool children it forks) gets its
    runtime; one built before is forgotten."""
    global _builder, _runtime
    _builder, _runtime = builder, None


def runtime() -> Runtime:
    global _runtime
    if _runtime is None:
        if _builder is None:
            raise RuntimeError(
                "no runtime installed: start workers through entrypoints.celery_app "
                "(or aftersales worker), which install one"
            )
        _runtime = _builder()
    return _runtime


@worker_process_init.connect
def _forget_parent_runtime(**_: object) -> None:
    global _runtime
    _runtime = None
