"""Per-process wiring for worker processes: the services tasks call, built on first use.

Celery's prefork pool forks children from the main worker process; database engines and
connection pools must not cross a fork, so nothing is built at import and the cache is cleared
in every new child (``worker_process_init``).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from celery import current_app
from celery.signals import worker_process_init

from adapters.fake_gateways import FakeGateways, build_fake_gateways
from config.gateways import get_gateway_settings
from config.settings import Settings, get_settings
from entrypoints.bootstrap import build_event_service, build_service, make_engine_for
from persistence.unit_of_work import SqlUnitOfWorkFactory
from tasks.kick import RelayKicker
from tasks.settings import WorkerSettings
from workflow.clock import Clock, FileClock, SystemClock
from workflow.effects import (
    TASK_NOTIFY,
    TASK_NOTIFY_MANY,
    EffectService,
    effects_for_topic,
    entry_to_message,
)
from workflow.events.ingestion import EventService
from workflow.model import OutboxEntry
from workflow.relay import OutboxRelay
from workflow.service import CaseService
from workflow.unconfirmed import UnconfirmedEvents


@dataclass
class Runtime:
    settings: Settings
    worker: WorkerSettings
    clock: Clock
    cases: CaseService
    events: EventService
    effects: EffectService
    relay: OutboxRelay
    gateways: FakeGateways
    #: The producers' ledger of unconfirmed events: on a Redis broker only.
    unconfirmed: UnconfirmedEvents | None = None


_runtime: Runtime | None = None


def runtime() -> Runtime:
    global _runtime
    if _runtime is None:
        _runtime = build_runtime(get_settings())
    return _runtime


@worker_process_init.connect
def _forget_parent_runtime(**_: object) -> None:
    global _runtime
    _runtime = None


def build_runtime(settings: Settings) -> Runtime:
    # transitions logs every state callback at INFO: one line per transition per worker.
    logging.getLogger("transitions").setLevel(logging.WARNING)
    clock: Clock = FileClock(str(settings.clock_file)) if settings.clock_file else SystemClock()
    worker = WorkerSettings()
    kicker = RelayKicker(current_app, min_interval_s=worker.relay_kick_interval_s)
    cases = build_service(settings, clock, outbox_written=kicker)
    gateways = build_fake_gateways(get_gateway_settings(), settings.database_url, clock)
    effects = EffectService(
        cases, gateways.carrier, gateways.payments, gateways.notifier, gateways.shipper, clock
    )
    relay = OutboxRelay(SqlUnitOfWorkFactory(make_engine_for(settings)), publish, clock)
    return Runtime(
        settings,
        worker,
        clock,
        cases,
        build_event_service(settings, cases),
        effects,
        relay,
        gateways,
        _unconfirmed(settings, worker),
    )


def _unconfirmed(settings: Settings, worker: WorkerSettings) -> UnconfirmedEvents | None:
    from tasks.unconfirmed import ledger_for  # its task module imports this one

    return ledger_for(settings, worker)


#: The most notices one ``aftersales.notify_many`` message carries.
NOTICES_PER_MESSAGE = 100


def publish(entries: Sequence[OutboxEntry]) -> None:
    """Hand outbox rows to the tasks that perform their effects: notices many to a message,
    every other row (pickups, refunds: each with retries of its own) alone."""
    notices: list[dict[str, Any]] = []
    for entry in entries:
        task = effects_for_topic[entry.topic]
        if task == TASK_NOTIFY:
            notices.append(entry_to_message(entry))
        else:
            current_app.send_task(task, args=[entry_to_message(entry)])
    for start in range(0, len(notices), NOTICES_PER_MESSAGE):
        chunk = notices[start : start + NOTICES_PER_MESSAGE]
        current_app.send_task(TASK_NOTIFY_MANY, args=[chunk])
