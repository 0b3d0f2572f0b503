"""``/metrics`` on the workers: queue depths read from the broker, parked outbox rows, and the
task counts and durations every worker process adds to the database."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Any

from config.settings import BrokerSettings, DatabaseSettings, Settings
from persistence.db import make_engine
from persistence.task_stats import SqlTaskStats
from tasks.app import TIMERS_QUEUE, create_app
from tasks.task_stats import TaskStats
from workflow.model import OutboxMessage

from .conftest import Api
from .test_ops import _samples


def durations(samples: dict[str, float], suffix: str, **labels: str) -> float:
    """A sample of ``aftersales_task_duration_seconds_<suffix>`` (labels in the exposition's
    sorted order)."""
    text = ",".join(f'{name}="{value}"' for name, value in sorted(labels.items()))
    return samples[f"aftersales_task_duration_seconds_{suffix}{{{text}}}"]


class Ticks:
    """A monotonic clock a test moves by hand."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_metrics_add_queue_depths_parked_outbox_rows_and_every_workers_task_durations(
    api: Api, tmp_path: Path
) -> None:
    # given three messages waiting in the main queue and one in the timers queue of the broker
    settings = Settings(
        database=DatabaseSettings(url=api.database_url),
        broker=BrokerSettings(url=f"filesystem://{tmp_path / 'broker'}"),
    )
    producer = create_app(settings)
    for _ in range(3):
        producer.send_task("aftersales.ping", args=["t"])
    producer.send_task("aftersales.ping", args=["t"], queue=TIMERS_QUEUE)
    # and two notices and a refund the relay parked, and a notice still pending
    now = api.clock.now()
    with api.cases.uow_factory() as uow:
        uow.outbox.add([OutboxMessage("case.transitioned", 1, {}, now) for _ in range(3)])
        uow.outbox.add([OutboxMessage("refund.requested", 1, {}, now)])
        uow.commit()
    with api.cases.uow_factory() as uow:
        entries = uow.outbox.unpublished(10)
        uow.outbox.mark_published([entry.id for entry in entries], now)
        uow.outbox.park([entries[0].id, entries[1].id, entries[3].id], now + timedelta(minutes=9))
        uow.commit()
    # and the tasks two worker processes ran, counted in each and flushed to the database
    store = SqlTaskStats(make_engine(api.database_url))
    for runs in ([0.004, 0.2], [0.03, 7.0]):
        ticks = Ticks()
        counts = TaskStats(clock=ticks)
        for index, seconds in enumerate(runs):
            counts.started(f"task-{index}")
            ticks.now += seconds
            counts.finished(f"task-{index}", "aftersales.notify_many", "SUCCESS")
        counts.record("aftersales.ingest_event", "succeeded", 0.03, count=3)  # a coalesced job
        counts.started("failing")
        counts.finished("failing", "aftersales.execute_refund", "FAILURE")
        counts.flush(lambda: store, force=True)

    # when an admin scrapes
    samples = _samples(api.client.get("/metrics", headers=api.auth("admin")).text)

    # then the queue depths are the broker's
    assert samples['aftersales_broker_queue_messages{queue="celery"}'] == 3
    assert samples['aftersales_broker_queue_messages{queue="timers"}'] == 1
    # and the parked rows are counted by topic, apart from the backlog
    assert samples['aftersales_outbox_parked{topic="case.transitioned"}'] == 2
    assert samples['aftersales_outbox_parked{topic="refund.requested"}'] == 1
    assert samples["aftersales_outbox_backlog"] == 1
    # and the tasks of both processes are counted, with their durations
    notices = {"task": "aftersales.notify_many", "outcome": "succeeded"}
    assert durations(samples, "count", **notices) == 4
    assert abs(durations(samples, "sum", **notices) - 7.234) < 1e-6
    cumulative = {"0.005": 1, "0.05": 2, "0.25": 3, "5.0": 3, "10.0": 4, "+Inf": 4}
    for le, count in cumulative.items():
        assert durations(samples, "bucket", le=le, **notices) == count, le
    events = {"task": "aftersales.ingest_event", "outcome": "succeeded"}
    assert durations(samples, "count", **events) == 6
    assert durations(samples, "bucket", le="0.01", **events) == 6
    assert durations(samples, "bucket", le="0.005", **events) == 0
    failed = {"task": "aftersales.execute_refund", "outcome": "failed"}
    assert durations(samples, "count", **failed) == 2


def test_metrics_leave_out_the_queue_depths_when_the_broker_is_unreachable(make_api: Any) -> None:
    # given an app whose broker is a Redis nobody listens on
    api = make_api(broker_url="redis://127.0.0.1:1/0")
    # when an admin scrapes
    response = api.client.get("/metrics", headers=api.auth("admin"))
    # then the database's figures go out, without the broker's
    assert response.status_code == 200
    samples = _samples(response.text)
    assert "aftersales_outbox_backlog" in samples
    assert not any(name.startswith("aftersales_broker_queue") for name in samples)
