"""The service's settings: one ``Settings`` read from the environment (``AFTERSALES_*``).

Nested sections (database, broker, worker, api, fakes) each read their own variables; the
names are flat (``AFTERSALES_DATABASE_URL``, ``AFTERSALES_EVENT_BATCH``, ``AFTERSALES_FAKE_SEED``)
as docs/ list them. Nothing is read at import time: the composition root
(``entrypoints/composition.py``) builds ``Settings()`` once per process, and tests pass their own.
"""

from __future__ import annotations

import re
from datetime import UTC, timedelta, timezone, tzinfo
from ipaddress import IPv4Network, IPv6Network, ip_network
from pathlib import Path
from typing import Annotated, Any, Self
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    SecretStr,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from config.durations import parse_duration
from config.limits import MAX_DOCUMENT_BYTES

#: Broker URL schemes of RabbitMQ (kombu's ``pyamqp`` transport; ``amqps`` is TLS).
AMQP_SCHEMES = frozenset({"amqp", "amqps", "pyamqp"})

#: The embedded database, relative to the directory the command runs in.
DEFAULT_DATABASE_FILE = Path("var") / "aftersales.db"


def sqlite_url(path: Path) -> str:
    """A ``sqlite:///`` URL for ``path`` made absolute, so it does not move with the cwd later."""
    return f"sqlite:///{path.expanduser().resolve()}"


def broker_scheme(url: str | None) -> str:
    """The scheme of a broker URL, lower case ("" for none: the embedded broker)."""
    if not url or ":" not in url:
        return ""
    return url.split(":", 1)[0].strip().lower()


def _default_database_url() -> str:
    return sqlite_url(Path.cwd() / DEFAULT_DATABASE_FILE)


#: The zone people read times in unless ``AFTERSALES_DISPLAY_TZ`` says otherwise: the
#: platform's (China Standard Time, no daylight saving).
DEFAULT_DISPLAY_TZ = "+08:00"
_OFFSET = re.compile(r"^(?P<sign>[+-])(?P<hours>\d{2}):(?P<minutes>\d{2})$")


def parse_zone(text: str) -> tzinfo:
    """A UTC offset (``+08:00``, ``-05:30``, ``Z``) or an IANA zone name (``Asia/Shanghai``)."""
    if text in ("Z", "UTC"):
        return UTC
    offset = _OFFSET.match(text)
    if offset is not None:
        hours, minutes = int(offset["hours"]), int(offset["minutes"])
        if hours > 14 or minutes > 59:
            raise ValueError(f"{text} is not a UTC offset (-14:00 to +14:00)")
        delta = timedelta(hours=hours, minutes=minutes)
        return timezone(-delta if offset["sign"] == "-" else delta, text)
    try:
        return ZoneInfo(text)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(
            f"{text!r} is neither a UTC offset like +08:00 nor a zone name like Asia/Shanghai"
        ) from None


def _section(prefix: str) -> SettingsConfigDict:
    # populate_by_name: tests and benches build sections by field name; the environment
    # supplies aliased fields under their alias.
    return SettingsConfigDict(env_prefix=prefix, extra="ignore", frozen=True, populate_by_name=True)


class DatabaseSettings(BaseSettings):
    model_config = _section("AFTERSALES_")

    #: SQLAlchemy URL; a plain ``postgresql://`` means psycopg 3. Default: ``./var/aftersales.db``.
    url: str = Field(
        default_factory=_default_database_url, validation_alias="AFTERSALES_DATABASE_URL"
    )
    #: Events applied per transaction by a batch (``ingest_events``, ``POST /events``, ``events
    #: ingest``), a savepoint each: one commit (one disk flush) shared by the batch.
    event_batch: int = Field(default=50, ge=1, le=1000, validation_alias="AFTERSALES_EVENT_BATCH")
    #: Due timers fired per transaction by a sweep, a savepoint each. At most 64: PostgreSQL
    #: keeps 64 subtransactions per backend in shared memory and spills beyond that
    #: (https://www.postgresql.org/docs/current/subxacts.html).
    timer_batch: int = Field(default=50, ge=1, le=64, validation_alias="AFTERSALES_TIMER_BATCH")
    #: PostgreSQL connections each process keeps in its pool, and how many more it may open
    #: at a peak (closed again when returned). A process holds at most their sum; the server's
    #: ``max_connections`` must exceed that sum over every process (docs/deploy.md, "Pool
    #: sizing"). SQLAlchemy's defaults; SQLite ignores all four (one file, one writer).
    pool_size: int = Field(
        default=5, ge=1, le=1000, validation_alias="AFTERSALES_DATABASE_POOL_SIZE"
    )
    max_overflow: int = Field(
        default=10, ge=0, le=1000, validation_alias="AFTERSALES_DATABASE_MAX_OVERFLOW"
    )
    #: Seconds a caller waits for a free connection when the process holds its maximum, then
    #: fails ("QueuePool limit ... reached"): a sign the pool is too small for the concurrency.
    pool_timeout_s: float = Field(
        default=30.0, gt=0, le=3600, validation_alias="AFTERSALES_DATABASE_POOL_TIMEOUT_S"
    )
    #: A connection older than this many seconds is replaced when next checked out; 0: never.
    #: Set it below the idle timeout of any proxy or firewall between the service and the server.
    pool_recycle_s: int = Field(
        default=0, ge=0, le=86_400, validation_alias="AFTERSALES_DATABASE_POOL_RECYCLE_S"
    )

    @property
    def is_sqlite(self) -> bool:
        """SQLite is the embedded database: created on first use, one writer at a time."""
        return self.url.split(":", 1)[0].split("+", 1)[0].lower() == "sqlite"


class BrokerSettings(BaseSettings):
    model_config = _section("AFTERSALES_BROKER_")

    #: Celery broker: ``redis://host:6379/0`` or ``amqp://user:password@host:5672/vhost``
    #: (RabbitMQ) in production; None means the embedded broker (the spool folder
    #: ``<var>/broker`` beside the database, see docs/workers.md).
    url: str | None = None
    #: Seconds a fetched message may stay unacknowledged before the broker hands it to another
    #: worker (Redis ``visibility_timeout``; the embedded broker honours the same rule). It must
    #: exceed the longest a message can stay unacknowledged: a retry's countdown plus the hard
    #: time limit, or the task runs twice at once. RabbitMQ has no such timer (a message goes
    #: back when its worker's channel closes): there ``consumer_timeout_s`` is the limit.
    visibility_timeout_s: int = Field(default=3600, gt=0)
    #: RabbitMQ only: the server's ``consumer_timeout`` (s), set in its ``rabbitmq.conf``; 30 min
    #: unless changed there. A delivery unacknowledged for longer makes the server close the
    #: worker's channel, and every message it held goes to another worker: the same rule as the
    #: visibility timeout applies to it. The worker cannot read the server's value: state it.
    consumer_timeout_s: int = Field(default=1800, gt=0)
    #: Prepended to every Redis key the broker uses, so several deployments (or test runs) can
    #: share one Redis database. Producers must use the same prefix. Redis only: on RabbitMQ
    #: each deployment has a virtual host of its own (the URL's path).
    key_prefix: str = ""
    #: How often an idle worker looks for new messages on the embedded broker (s). It bounds
    #: both the idle latency and, with the pool full, the throughput (concurrency / interval).
    polling_interval_s: float = Field(default=0.1, gt=0)

    @property
    def is_amqp(self) -> bool:
        """RabbitMQ (or another AMQP 0-9-1 server) through kombu's ``pyamqp`` transport."""
        return broker_scheme(self.url) in AMQP_SCHEMES


class WorkerSettings(BaseSettings):
    """What only the Celery processes read (and the CLI's ledger view: the resend window)."""

    model_config = _section("AFTERSALES_")

    #: Hard per-task time limit (s): the pool kills a task still running then. Our tasks are
    #: short batches, so 10 min already means something is stuck.
    task_time_limit_s: int = Field(default=600, gt=0)
    #: The longest retry countdown (s) a task may ask for; ``retry_countdown`` caps at it.
    retry_backoff_max_s: int = Field(default=600, ge=0)
    #: Beat period of the timer sweep (s); business timers fire at most this late.
    timer_sweep_interval_s: float = Field(default=1.0, gt=0)
    #: Beat period of the outbox relay (s), a fallback behind the kick sent after commits.
    outbox_relay_interval_s: float = Field(default=5.0, gt=0)
    #: A worker process kicks the relay at most once per this many seconds: the first commit
    #: with outbox rows after a quiet spell kicks at once, the commits of a busy spell share
    #: one kick (and one relay run) per interval. 0 kicks after every such commit.
    relay_kick_interval_s: float = Field(default=0.1, ge=0)
    #: A published outbox row no consumer completed within this many seconds is published
    #: again (the broker lost it, or its consumer died); consumers are idempotent.
    outbox_redeliver_after_s: float = Field(default=60.0, gt=0)
    #: Publishes of one outbox row that no consumer completed before the relay parks it (stops
    #: publishing it; ``aftersales outbox parked`` lists it, ``outbox retry`` sends it again).
    #: A consumer waiting to retry does not count (it postpones the row); each redelivery after
    #: a lost message or a failed consumer does. 10 at the 60 s window: parked after 10 minutes.
    outbox_max_attempts: int = Field(default=10, ge=1, le=1000)
    #: Task events and heartbeats for Flower and ``celery events`` (never on the embedded
    #: broker). Off saves the worker's main process three broker messages per task.
    task_events: bool = True
    #: An event a producer kept in the ledger (``tasks/producer.py`` over Redis) and the
    #: service has not processed this many seconds after it was sent is sent again (then
    #: after twice as long each time); beat looks every ``event_resend_interval_s``.
    event_resend_after_s: float = Field(default=60.0, gt=0)
    event_resend_interval_s: float = Field(default=10.0, gt=0)
    #: Single-event messages (``aftersales.ingest_event``) a prefork worker may hold beyond its
    #: prefetch while every pool process is busy, applied together by the next free one
    #: (tasks/coalesce.py); also the most events one such job carries. 0 turns it off.
    event_coalesce_max: int = Field(default=100, ge=0)
    #: Timers claimed per sweep batch, and how long a claim may stay unfinished before another
    #: sweeper takes it (its sweeper died); firing is idempotent, so a reclaim never fires twice.
    timer_sweep_batch: int = Field(default=500, ge=1)
    timer_reclaim_after_s: float = Field(default=120.0, gt=0)
    #: Where ``aftersales.ping`` leaves its proof of execution. Default: ``<var>/worker-pings``.
    ping_dir: Path | None = None


def _duration(value: Any) -> Any:
    return parse_duration(value) if isinstance(value, str) else value


#: A duration from the environment as ``30d``, ``12h``... (or seconds as a number).
Duration = Annotated[timedelta, BeforeValidator(_duration)]


def _networks(value: Any) -> Any:
    if isinstance(value, str):
        value = [part for part in value.replace(",", " ").split() if part]
    return [ip_network(part, strict=False) if isinstance(part, str) else part for part in value]


#: Addresses and networks, from the environment as ``10.0.0.0/8, 127.0.0.1``.
Networks = Annotated[list[IPv4Network | IPv6Network], NoDecode, BeforeValidator(_networks)]


class ApiSettings(BaseSettings):
    model_config = _section("AFTERSALES_API_")

    #: Largest request body (bytes). An application or a batch of 100 events is a few KiB.
    max_body_bytes: int = Field(default=MAX_DOCUMENT_BYTES, ge=1024)
    #: Requests a minute per token (bursts up to the same number); 0: no limit.
    rate_limit_per_minute: int = Field(default=1200, ge=0)
    #: Failed authentications a minute per client address; 0: no limit.
    auth_failures_per_minute: int = Field(default=30, ge=0)
    #: How long the first response to an ``Idempotency-Key`` is replayed (hours).
    idempotency_hours: float = Field(default=24.0, gt=0)
    #: Ask the workers for an outbox relay after a transition wrote effects, so they start at
    #: once instead of at the relay's next sweep (5 s). Off: the sweep alone publishes.
    kick_relay: bool = True
    #: Events per ``POST /events`` batch.
    max_batch: int = Field(default=100, ge=1, le=1000)
    #: Seconds a ``/metrics`` scrape's database figures are reused (several scrapers, one query).
    metrics_cache_seconds: float = Field(default=5.0, ge=0)
    #: Seconds each ``/readyz`` check may take before it counts as failed.
    readiness_timeout_seconds: float = Field(default=3.0, gt=0)
    #: Hours a console sign-in lasts (the session cookie's expiry).
    console_session_hours: float = Field(default=8.0, gt=0, le=24 * 30)
    #: Key that signs console session cookies and CSRF tokens; give every API process the same
    #: one (32+ random bytes). Unset: a random key per process, so sign-ins end at a restart.
    console_secret: SecretStr | None = None
    #: The reverse proxies whose ``X-Forwarded-For`` is believed (addresses or networks). The
    #: client address is what the nearest untrusted hop says; it keys the limit on failed
    #: authentications. Empty (the default): no header is believed, the peer is the client.
    trusted_proxies: Networks = Field(default_factory=list)


Rate = Annotated[float, Field(ge=0.0, le=1.0)]
Millis = Annotated[float, Field(ge=0.0, le=600_000.0)]


class FakeBehaviour(BaseModel):
    """How one fake remote behaves: latency per call, and the shares of failures and timeouts."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    latency_ms: Millis = 0.0
    failure_rate: Rate = 0.0
    timeout_rate: Rate = 0.0

    @model_validator(mode="after")
    def _rates_fit(self) -> Self:
        if self.failure_rate + self.timeout_rate > 1.0:
            raise ValueError("failure_rate + timeout_rate must not exceed 1")
        return self


class FakeGatewaySettings(BaseSettings):
    """The in-process fakes of the carrier, payment gateway, shipper and notifier.

    ``*_failure_rate`` is the share of calls that fail: for payments a definite decline (stored
    under the idempotency key, as real gateways do), for the others ``GatewayUnavailable``.
    ``*_timeout_rate`` is the share that time out, half before the remote acted, half after it
    did with the answer lost. The two rates of a fake sum to at most 1. ``ledger_url`` is the
    database of the fakes' own tables; None: the service's database.
    """

    model_config = _section("AFTERSALES_FAKE_")

    carrier_latency_ms: Millis = 0.0
    carrier_failure_rate: Rate = 0.0
    carrier_timeout_rate: Rate = 0.0

    payment_latency_ms: Millis = 0.0
    payment_failure_rate: Rate = 0.0
    payment_timeout_rate: Rate = 0.0

    shipper_latency_ms: Millis = 0.0
    shipper_failure_rate: Rate = 0.0
    shipper_timeout_rate: Rate = 0.0

    notifier_latency_ms: Millis = 0.0
    notifier_failure_rate: Rate = 0.0
    notifier_timeout_rate: Rate = 0.0

    #: Seed of the fakes' random draws; each fake derives its own stream from it.
    seed: int = 0
    #: Database of the fakes' own tables; None: the service's database.
    ledger_url: str | None = None

    @model_validator(mode="after")
    def _rates_fit(self) -> Self:
        for name in ("carrier", "payment", "shipper", "notifier"):
            self.behaviour(name)  # validates the pair of rates
        return self

    def behaviour(self, name: str) -> FakeBehaviour:
        """The settings of one fake: ``carrier``, ``payment``, ``shipper`` or ``notifier``."""
        return FakeBehaviour(
            latency_ms=getattr(self, f"{name}_latency_ms"),
            failure_rate=getattr(self, f"{name}_failure_rate"),
            timeout_rate=getattr(self, f"{name}_timeout_rate"),
        )

    @property
    def carrier(self) -> FakeBehaviour:
        return self.behaviour("carrier")

    @property
    def payment(self) -> FakeBehaviour:
        return self.behaviour("payment")

    @property
    def shipper(self) -> FakeBehaviour:
        return self.behaviour("shipper")

    @property
    def notifier(self) -> FakeBehaviour:
        return self.behaviour("notifier")


class Settings(BaseSettings):
    """Every setting of every process; a section reads the environment when it is defaulted."""

    model_config = SettingsConfigDict(env_prefix="AFTERSALES_", extra="ignore", frozen=True)

    database: DatabaseSettings = Field(default_factory=DatabaseSettings)
    broker: BrokerSettings = Field(default_factory=BrokerSettings)
    worker: WorkerSettings = Field(default_factory=WorkerSettings)
    api: ApiSettings = Field(default_factory=ApiSettings)
    fakes: FakeGatewaySettings = Field(default_factory=FakeGatewaySettings)
    #: A TOML file whose keys are laid over ``config/policy.toml``; only changed keys are needed.
    policy_file: Path | None = None
    #: A TOML file whose ``[sources]`` are laid over ``config/sources.toml`` (event producers).
    sources_file: Path | None = None
    #: Simulation only: a file holding the "now" every process reads (workflow.clock.FileClock).
    clock_file: Path | None = None
    #: How far an admin may move a case's deadline in one extension (``30d``, ``72h``), past
    #: the deadline it replaces; the CLI and the API apply the same rule.
    max_deadline_extension: Duration = Field(default=timedelta(days=30), gt=timedelta(0))
    #: The one zone the command line shows times in (cards, tables, refusal messages): a UTC
    #: offset like ``+08:00`` or a zone name like ``Asia/Shanghai``. JSON stays in UTC.
    display_tz: str = DEFAULT_DISPLAY_TZ

    @field_validator("display_tz")
    @classmethod
    def _known_zone(cls, value: str) -> str:
        parse_zone(value)
        return value

    @property
    def display_zone(self) -> tzinfo:
        return parse_zone(self.display_tz)

    @model_validator(mode="after")
    def _unacked_window_fits(self) -> Self:
        longest_unacked = self.worker.task_time_limit_s + self.worker.retry_backoff_max_s
        broker = self.broker
        if broker.is_amqp:
            name, window = "broker_consumer_timeout_s", broker.consumer_timeout_s
            consequence = (
                "RabbitMQ closes the channel of a worker holding a message that long, and "
                "every message it held goes to another worker"
            )
        else:
            name, window = "broker_visibility_timeout_s", broker.visibility_timeout_s
            consequence = (
                "a slow or retried task is handed to a second worker while the first still runs"
            )
        if longest_unacked >= window:
            raise ValueError(
                f"{name} ({window}) must exceed task_time_limit_s + retry_backoff_max_s "
                f"({longest_unacked}); otherwise {consequence}"
            )
        return self

    @model_validator(mode="after")
    def _key_prefix_only_on_redis(self) -> Self:
        if self.broker.key_prefix and self.broker.is_amqp:
            raise ValueError(
                "broker_key_prefix is for Redis; on RabbitMQ give each deployment a virtual "
                "host of its own in broker_url (amqp://user:password@host:5672/<vhost>)"
            )
        return self
