"""The service's settings: one ``Settings`` read from the environment (``AFTERSALES_*``).

Nested sections (database, broker, worker, api, fakes) each read their own variables; the
names are flat (``AFTERSALES_DATABASE_URL``, ``AFTERSALES_EVENT_BATCH``, ``AFTERSALES_FAKE_SEED``)
as docs/ list them. Nothing is read at import time: the composition root
(``entrypoints/composition.py``) builds ``Settings()`` once per process, and tests pass their own.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Self

from pydantic import BaseModel, ConfigDict, Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

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


class ApiSettings(BaseSettings):
    model_config = _section("AFTERSALES_API_")

    #: Largest request body (bytes). An application or a batch of 100 events is a few KiB.
    max_body_bytes: int = Field(default=256 * 1024, ge=1024)
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
