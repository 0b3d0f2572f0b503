"""Worker-only settings (``AFTERSALES_*`` environment variables), read when a runtime is built.

They sit beside ``config.settings.Settings`` (database and broker URLs) rather than inside it
because only the Celery processes read them; the CLI never does. Nothing is read at import time:
``WorkerSettings()`` reads the environment when ``create_app`` is called.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class WorkerSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="AFTERSALES_", extra="ignore", frozen=True)

    #: Seconds a fetched message may stay unacknowledged before the broker hands it to another
    #: worker (Redis ``visibility_timeout``; the embedded broker honours the same rule). It must
    #: exceed the longest a message can stay unacknowledged: a retry's countdown plus the hard
    #: time limit, or the task runs twice at once.
    broker_visibility_timeout_s: int = Field(default=3600, gt=0)
    #: Hard per-task time limit (s): the pool kills a task still running then. Our tasks are
    #: short batches, so 10 min already means something is stuck.
    task_time_limit_s: int = Field(default=600, gt=0)
    #: The longest retry countdown (s) a task may ask for; ``retry_countdown`` caps at it.
    retry_backoff_max_s: int = Field(default=600, ge=0)
    #: Prepended to every Redis key the broker uses, so several deployments (or test runs) can
    #: share one Redis database. Producers must use the same prefix.
    broker_key_prefix: str = ""
    #: How often an idle worker looks for new messages on the embedded broker (s). It bounds
    #: both the idle latency and, with the pool full, the throughput (concurrency / interval).
    broker_polling_interval_s: float = Field(default=0.1, gt=0)
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

    @model_validator(mode="after")
    def _unacked_window_fits(self) -> WorkerSettings:
        longest_unacked = self.task_time_limit_s + self.retry_backoff_max_s
        if longest_unacked >= self.broker_visibility_timeout_s:
            raise ValueError(
                f"broker_visibility_timeout_s ({self.broker_visibility_timeout_s}) must exceed "
                f"task_time_limit_s + retry_backoff_max_s ({longest_unacked}); otherwise a "
                "slow or retried task is handed to a second worker while the first still runs"
            )
        return self
