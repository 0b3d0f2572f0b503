"""HTTP API settings (``AFTERSALES_API_*``), read when an app is built, beside ``Settings``."""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class ApiSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="AFTERSALES_API_", extra="ignore", frozen=True)

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
