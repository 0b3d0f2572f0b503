"""``/metrics``: Prometheus text, from the database at scrape time and this process's requests.

Database figures (cases, transitions, timer lateness, outbox, parked outbox rows, dead letters,
refunds, and the task counts and durations every worker process adds to ``task_stats``) cover
every process, so any API process reports the same numbers; they are cached for
``metrics_cache_seconds`` so several scrapers cost one set of queries. So are the broker's queue
depths, read from the broker at scrape time. Request counts and durations are this process's
own.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry, Counter, Histogram, disable_created_metrics
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from persistence.readings import MetricsSnapshot, SqlReadings
from tasks.resender import UnconfirmedEvents, summarize
from workflow.clock import Clock
from workflow.model import DeadLetterStatus

logger = logging.getLogger(__name__)

#: Triggers whose transitions are refund outcomes reported by the payment channel.
REFUND_OUTCOMES = {"confirm_refund": "succeeded", "fail_refund": "failed"}


class DatabaseCollector(Collector):
    def __init__(self, readings: SqlReadings, clock: Clock, cache_seconds: float) -> None:
        self._readings = readings
        self._clock = clock
        self._cache_seconds = cache_seconds
        self._cached: tuple[float, MetricsSnapshot] | None = None
        self._lock = threading.Lock()

    def snapshot(self) -> MetricsSnapshot:
        with self._lock:
            now = time.monotonic()
            if self._cached is None or now - self._cached[0] >= self._cache_seconds:
                self._cached = (now, self._readings.snapshot())
            return self._cached[1]

    def collect(self) -> Iterator[Metric]:
        snap = self.snapshot()
        cases = GaugeMetricFamily(
            "aftersales_cases", "Cases by type and state.", labels=["type", "state"]
        )
        for (case_type, state), count in sorted(snap.cases.items()):
            cases.add_metric([case_type, state], count)
        yield cases

        transitions = CounterMetricFamily(
            "aftersales_transitions",
            "Transitions logged, by case type, trigger and the state they led to.",
            labels=["type", "trigger", "state"],
        )
        refunds = CounterMetricFamily(
            "aftersales_refunds",
            "Refund outcomes reported by the payment channel (confirm_refund, fail_refund).",
            labels=["outcome"],
        )
        outcomes = dict.fromkeys(REFUND_OUTCOMES.values(), 0)
        for (case_type, trigger, state), count in sorted(snap.transitions.items()):
            transitions.add_metric([case_type, trigger, state], count)
            if trigger in REFUND_OUTCOMES:
                outcomes[REFUND_OUTCOMES[trigger]] += count
        for outcome, count in outcomes.items():
            refunds.add_metric([outcome], count)
        yield transitions
        yield refunds

        lateness = HistogramMetricFamily(
            "aftersales_timer_lateness_seconds",
            "How long after their due time timers fired.",
        )
        buckets = [(_bound(le), float(count)) for le, count in snap.lateness.buckets]
        buckets.append(("+Inf", float(snap.lateness.count)))
        lateness.add_metric([], buckets, snap.lateness.sum_seconds)
        yield lateness

        yield GaugeMetricFamily(
            "aftersales_outbox_backlog",
            "Outbox messages no consumer has completed (waiting or in flight).",
            value=snap.outbox_backlog,
        )
        oldest = snap.outbox_oldest_pending_at
        age = max(0.0, (self._clock.now() - oldest).total_seconds()) if oldest else 0.0
        yield GaugeMetricFamily(
            "aftersales_outbox_oldest_pending_age_seconds",
            "Age of the oldest uncompleted outbox message (0 when none).",
            value=age,
        )
        parked = GaugeMetricFamily(
            "aftersales_outbox_parked",
            "Outbox messages the relay stopped publishing after AFTERSALES_OUTBOX_MAX_ATTEMPTS "
            "tries that no consumer completed, by topic (aftersales outbox parked|retry).",
            labels=["topic"],
        )
        for topic, count in sorted(snap.outbox_parked.items()):
            parked.add_metric([topic], count)
        yield parked
        letters = GaugeMetricFamily(
            "aftersales_dead_letters", "Dead letters by status.", labels=["status"]
        )
        for status in DeadLetterStatus:
            letters.add_metric([status.value], snap.dead_letters.get(status.value, 0))
        yield letters

        durations = HistogramMetricFamily(
            "aftersales_task_duration_seconds",
            "Celery tasks run by every worker process, by task and outcome (succeeded, failed, "
            "retried), and how long each ran; _count is how many ran.",
            labels=["task", "outcome"],
        )
        for (task, outcome), histogram in snap.task_durations.items():
            task_buckets = [(_bound(le), float(count)) for le, count in histogram.buckets]
            task_buckets.append(("+Inf", float(histogram.count)))
            durations.add_metric([task, outcome], task_buckets, histogram.sum_seconds)
        yield durations


class UnconfirmedCollector(Collector):
    """The producers' ledger of unconfirmed events (Redis brokers only; docs/events.md)."""

    def __init__(
        self,
        ledger: UnconfirmedEvents,
        resend_after_s: float,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self._ledger = ledger
        self._after = resend_after_s
        self._wall = wall

    def collect(self) -> Iterator[Metric]:
        try:
            summary = summarize(self._ledger, self._after, self._wall())
        except Exception:
            # Redis unreachable: the database's figures still go out (/readyz says why).
            logger.warning("the ledger of unconfirmed events could not be read", exc_info=True)
            return
        yield GaugeMetricFamily(
            "aftersales_unconfirmed_events",
            "Producers' events kept in the ledger and not yet confirmed processed.",
            value=summary.kept,
        )
        yield GaugeMetricFamily(
            "aftersales_unconfirmed_events_due",
            "Of those, the ones the resender sends again at its next look: not processed "
            "within the resend window (a lasting non-zero value: events do not get through).",
            value=summary.due,
        )


class BrokerCollector(Collector):
    """Messages waiting in each task queue of the broker, read at scrape time (cached for
    ``cache_seconds``): the same figure whichever API process is asked."""

    def __init__(self, depths: Callable[[], dict[str, int]], cache_seconds: float) -> None:
        self._depths = depths
        self._cache_seconds = cache_seconds
        self._cached: tuple[float, dict[str, int]] | None = None
        self._lock = threading.Lock()

    def collect(self) -> Iterator[Metric]:
        with self._lock:
            now = time.monotonic()
            if self._cached is None or now - self._cached[0] >= self._cache_seconds:
                try:
                    self._cached = (now, self._depths())
                except Exception:
                    # Broker unreachable: the other figures still go out (/readyz says why).
                    logger.warning("the broker's queue depths could not be read", exc_info=True)
                    return
            depths = self._cached[1]
        family = GaugeMetricFamily(
            "aftersales_broker_queue_messages",
            "Messages waiting in each task queue of the broker (not those a worker holds).",
            labels=["queue"],
        )
        for queue, count in sorted(depths.items()):
            family.add_metric([queue], count)
        yield family


def _bound(seconds: float) -> str:
    return str(float(seconds))


class ApiMetrics:
    """The registry of one app: database figures plus request counts and durations."""

    def __init__(
        self,
        readings: SqlReadings,
        clock: Clock,
        cache_seconds: float,
        unconfirmed: UnconfirmedCollector | None = None,
        broker: BrokerCollector | None = None,
    ) -> None:
        # ``*_created`` series double the output and say nothing a scraper needs (process-wide).
        disable_created_metrics()
        # Per app, not the global default registry: tests build many apps in one process.
        self.registry = CollectorRegistry(auto_describe=False)
        self.database = DatabaseCollector(readings, clock, cache_seconds)
        self.registry.register(self.database)
        if unconfirmed is not None:
            self.registry.register(unconfirmed)
        if broker is not None:
            self.registry.register(broker)
        self.requests = Counter(
            "aftersales_http_requests",
            "HTTP requests answered by this process, by route template and status.",
            ["method", "route", "status"],
            registry=self.registry,
        )
        self.durations = Histogram(
            "aftersales_http_request_duration_seconds",
            "Time to answer HTTP requests in this process.",
            ["method", "route"],
            registry=self.registry,
        )

    def record(self, method: str, route: str, status: int, seconds: float) -> None:
        self.requests.labels(method, route, str(status)).inc()
        self.durations.labels(method, route).observe(seconds)
