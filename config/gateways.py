"""Typed settings of the in-process fake gateways (``AFTERSALES_FAKE_*``).

The fakes stand in for the carrier, the payment gateway, the shipper of replacements and the
notification service until real adapters exist. Each has a simulated latency and failure
behaviour, drawn from a seeded random generator so a run can be repeated:

- ``*_failure_rate``: the share of calls that fail. For payments this is a *definite* failure
  (the gateway declined; it is stored under the idempotency key, as real gateways do); for the
  others the remote is unavailable (``GatewayUnavailable``: retry later).
- ``*_timeout_rate``: the share of calls that time out (``GatewayUnavailable``); half of them
  before the remote did anything, half after it did (paid, booked, sent) with the answer lost.

Rates are probabilities in ``[0, 1]``; their sum must not exceed 1. ``ledger_url`` is the database
of the fakes' own tables (the payment ledger, the notifications sent); None means the service's
database (``AFTERSALES_DATABASE_URL``), in tables of their own that our migrations do not know.
"""

from __future__ import annotations

from typing import Annotated, Self

from pydantic import BaseModel, ConfigDict, Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

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


class GatewaySettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="AFTERSALES_FAKE_", extra="ignore", frozen=True)

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


def get_gateway_settings() -> GatewaySettings:
    """Settings from the current environment, read afresh on every call."""
    return GatewaySettings()
