"""One ``Settings`` with nested sections, read from the environment under the documented names."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from config.settings import BrokerSettings, Settings, WorkerSettings, parse_zone
from entrypoints.views import zone_name

#: Every variable docs/ and README.md name, a value other than its default, and where it lands.
DOCUMENTED = [
    ("AFTERSALES_DATABASE_URL", "postgresql://db/x", ("database", "url"), "postgresql://db/x"),
    ("AFTERSALES_EVENT_BATCH", "7", ("database", "event_batch"), 7),
    ("AFTERSALES_TIMER_BATCH", "9", ("database", "timer_batch"), 9),
    ("AFTERSALES_BROKER_URL", "redis://r:6379/0", ("broker", "url"), "redis://r:6379/0"),
    ("AFTERSALES_BROKER_VISIBILITY_TIMEOUT_S", "5000", ("broker", "visibility_timeout_s"), 5000),
    ("AFTERSALES_BROKER_CONSUMER_TIMEOUT_S", "7200", ("broker", "consumer_timeout_s"), 7200),
    ("AFTERSALES_BROKER_KEY_PREFIX", "shop1:", ("broker", "key_prefix"), "shop1:"),
    ("AFTERSALES_BROKER_POLLING_INTERVAL_S", "0.5", ("broker", "polling_interval_s"), 0.5),
    ("AFTERSALES_TASK_TIME_LIMIT_S", "60", ("worker", "task_time_limit_s"), 60),
    ("AFTERSALES_RETRY_BACKOFF_MAX_S", "30", ("worker", "retry_backoff_max_s"), 30),
    ("AFTERSALES_TIMER_SWEEP_INTERVAL_S", "2", ("worker", "timer_sweep_interval_s"), 2.0),
    ("AFTERSALES_OUTBOX_RELAY_INTERVAL_S", "3", ("worker", "outbox_relay_interval_s"), 3.0),
    ("AFTERSALES_RELAY_KICK_INTERVAL_S", "0", ("worker", "relay_kick_interval_s"), 0.0),
    ("AFTERSALES_OUTBOX_MAX_ATTEMPTS", "3", ("worker", "outbox_max_attempts"), 3),
    ("AFTERSALES_TASK_EVENTS", "false", ("worker", "task_events"), False),
    ("AFTERSALES_EVENT_COALESCE_MAX", "0", ("worker", "event_coalesce_max"), 0),
    ("AFTERSALES_EVENT_RESEND_AFTER_S", "90", ("worker", "event_resend_after_s"), 90.0),
    ("AFTERSALES_EVENT_RESEND_INTERVAL_S", "4", ("worker", "event_resend_interval_s"), 4.0),
    ("AFTERSALES_PING_DIR", "/tmp/pings", ("worker", "ping_dir"), Path("/tmp/pings")),
    ("AFTERSALES_API_MAX_BODY_BYTES", "2048", ("api", "max_body_bytes"), 2048),
    ("AFTERSALES_API_RATE_LIMIT_PER_MINUTE", "0", ("api", "rate_limit_per_minute"), 0),
    ("AFTERSALES_API_AUTH_FAILURES_PER_MINUTE", "5", ("api", "auth_failures_per_minute"), 5),
    ("AFTERSALES_API_MAX_BATCH", "10", ("api", "max_batch"), 10),
    ("AFTERSALES_API_KICK_RELAY", "false", ("api", "kick_relay"), False),
    ("AFTERSALES_API_IDEMPOTENCY_HOURS", "1", ("api", "idempotency_hours"), 1.0),
    ("AFTERSALES_API_METRICS_CACHE_SECONDS", "0", ("api", "metrics_cache_seconds"), 0.0),
    ("AFTERSALES_API_READINESS_TIMEOUT_SECONDS", "1", ("api", "readiness_timeout_seconds"), 1.0),
    ("AFTERSALES_API_CONSOLE_SESSION_HOURS", "1", ("api", "console_session_hours"), 1.0),
    ("AFTERSALES_FAKE_SEED", "3", ("fakes", "seed"), 3),
    ("AFTERSALES_FAKE_LEDGER_URL", "sqlite:///f.db", ("fakes", "ledger_url"), "sqlite:///f.db"),
    ("AFTERSALES_FAKE_PAYMENT_FAILURE_RATE", "0.25", ("fakes", "payment_failure_rate"), 0.25),
    ("AFTERSALES_FAKE_CARRIER_LATENCY_MS", "12", ("fakes", "carrier_latency_ms"), 12.0),
    ("AFTERSALES_POLICY_FILE", "/etc/p.toml", ("policy_file",), Path("/etc/p.toml")),
    ("AFTERSALES_SOURCES_FILE", "/etc/s.toml", ("sources_file",), Path("/etc/s.toml")),
    ("AFTERSALES_CLOCK_FILE", "/tmp/clock", ("clock_file",), Path("/tmp/clock")),
    ("AFTERSALES_DISPLAY_TZ", "Europe/Paris", ("display_tz",), "Europe/Paris"),
]


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name, *_ in DOCUMENTED:
        monkeypatch.delenv(name, raising=False)


@pytest.mark.parametrize(("name", "text", "path", "expected"), DOCUMENTED, ids=lambda v: v)
def test_each_documented_variable_keeps_its_name(
    monkeypatch: pytest.MonkeyPatch, name: str, text: str, path: tuple[str, ...], expected: object
) -> None:
    # given the variable set
    monkeypatch.setenv(name, text)
    # when the settings are read
    value: object = Settings()
    for attribute in path:
        value = getattr(value, attribute)
    # then it lands in its section
    assert value == expected


def test_defaults_are_unchanged() -> None:
    settings = Settings()
    assert settings.database.url.endswith("/var/aftersales.db")
    assert (settings.database.event_batch, settings.database.timer_batch) == (50, 50)
    assert settings.broker.url is None
    assert (settings.broker.visibility_timeout_s, settings.broker.key_prefix) == (3600, "")
    assert settings.worker.task_time_limit_s == settings.worker.retry_backoff_max_s == 600
    assert settings.worker.event_coalesce_max == 100
    assert (settings.api.max_batch, settings.api.rate_limit_per_minute) == (100, 1200)
    assert settings.fakes.payment.failure_rate == 0.0
    assert settings.policy_file is None and settings.clock_file is None
    assert settings.sources_file is None
    assert settings.display_tz == "+08:00"
    assert settings.display_zone.utcoffset(None) == timedelta(hours=8)


@pytest.mark.parametrize(
    ("text", "offset"),
    [("+08:00", 8 * 60), ("-05:30", -330), ("Z", 0), ("UTC", 0), ("+14:00", 14 * 60)],
)
def test_a_display_zone_is_an_offset(text: str, offset: int) -> None:
    zone = parse_zone(text)
    assert zone.utcoffset(None) == timedelta(minutes=offset)
    assert zone_name(zone) == (text if text not in ("Z", "UTC") else "UTC")


def test_a_display_zone_is_a_zone_name() -> None:
    zone = parse_zone("Asia/Shanghai")
    assert zone_name(zone) == "Asia/Shanghai"
    assert datetime(2026, 7, 1, tzinfo=UTC).astimezone(zone).hour == 8


@pytest.mark.parametrize(
    "text", ["+15:00", "+08:60", "8", "+8:00", "Mars/Base", "../etc/passwd", ""]
)
def test_an_unknown_display_zone_is_refused(monkeypatch: pytest.MonkeyPatch, text: str) -> None:
    with pytest.raises(ValueError, match="UTC offset"):
        parse_zone(text)
    monkeypatch.setenv("AFTERSALES_DISPLAY_TZ", text)
    with pytest.raises(ValueError, match="display_tz"):
        Settings()


def test_sections_are_built_by_field_name_too() -> None:
    settings = Settings(broker=BrokerSettings(url="redis://r/0", key_prefix="p:"))
    assert (settings.broker.url, settings.broker.key_prefix) == ("redis://r/0", "p:")


def test_the_visibility_timeout_must_exceed_the_longest_unacknowledged_run() -> None:
    with pytest.raises(ValueError, match="visibility_timeout"):
        Settings(
            broker=BrokerSettings(visibility_timeout_s=1000),
            worker=WorkerSettings(task_time_limit_s=600, retry_backoff_max_s=600),
        )


def test_on_rabbitmq_the_consumer_timeout_bounds_the_longest_unacknowledged_run() -> None:
    # given RabbitMQ, whose server closes a channel holding a delivery past consumer_timeout
    broker = "amqp://guest:guest@127.0.0.1:5672/shop"
    worker = WorkerSettings(task_time_limit_s=600, retry_backoff_max_s=600)
    # then a consumer timeout below the longest run is refused, naming the setting and why
    with pytest.raises(
        ValueError, match=r"broker_consumer_timeout_s \(1000\) must exceed"
    ) as error:
        Settings(broker=BrokerSettings(url=broker, consumer_timeout_s=1000), worker=worker)
    assert "RabbitMQ closes the channel" in str(error.value)
    # and RabbitMQ's default (30 min) fits the default limits, whatever the visibility timeout
    # (a Redis setting) says
    settings = Settings(broker=BrokerSettings(url=broker, visibility_timeout_s=1), worker=worker)
    assert settings.broker.consumer_timeout_s == 1800
    # and on Redis the consumer timeout means nothing
    Settings(broker=BrokerSettings(url="redis://r/0", consumer_timeout_s=1), worker=worker)


def test_a_key_prefix_on_rabbitmq_is_refused_for_a_virtual_host() -> None:
    # a prefix would be ignored there: two deployments would share their queues
    with pytest.raises(ValueError, match="virtual host"):
        Settings(broker=BrokerSettings(url="amqp://mq:5672/", key_prefix="shop1:"))
