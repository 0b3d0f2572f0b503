"""Policy values: time limits, warranty periods, refund channel windows.

The defaults live in ``policy.toml`` beside this file (RULES.md part B, in one readable place).
Operators override any of them with their own TOML file named by ``AFTERSALES_POLICY_FILE``;
a file only needs the keys it changes. This module depends on nothing else of ours, so the domain
can take these values as plain typed objects.
"""

from __future__ import annotations

import tomllib
from datetime import timedelta
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

DEFAULT_POLICY_FILE = Path(__file__).with_name("policy.toml")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class TimerPolicy(_Strict):
    """How long the case waits in a state before the timer's trigger fires (hours)."""

    hours: float = Field(gt=0)

    @property
    def delay(self) -> timedelta:
        return timedelta(hours=self.hours)


class RefundRetryPolicy(_Strict):
    #: First retry after this many minutes; each further retry doubles it, up to ``max_minutes``.
    first_minutes: float = Field(default=5, gt=0)
    max_minutes: float = Field(default=240, gt=0)
    #: After this many failed attempts the case stays in refund_failed for an admin.
    max_attempts: int = Field(default=5, ge=1)

    def delay_after(self, failed_attempts: int) -> timedelta:
        minutes = min(self.first_minutes * 2 ** max(failed_attempts - 1, 0), self.max_minutes)
        return timedelta(minutes=minutes)


class QualityDays(_Strict):
    """A category's own quality-problem windows (days after delivery); None keeps the default."""

    refund_days: int | None = Field(default=None, ge=0)
    exchange_days: int | None = Field(default=None, ge=0)


class Policy(_Strict):
    """Every policy value the engine uses; see ``policy.toml`` for the defaults and their rules."""

    #: Calendar days are counted in this zone ("the day after delivery").
    timezone: str = "Asia/Shanghai"
    no_reason_days: int = Field(default=7, ge=0)
    #: Categories without the 7-day no-reason return (RULES.md B, excluded categories).
    no_reason_excluded: frozenset[str] = frozenset()
    #: Quality problems (RULES.md C, 三包): refund within ``quality_refund_days`` of delivery,
    #: exchange within ``quality_exchange_days``, then repair within the category's warranty.
    quality_refund_days: int = Field(default=7, ge=0)
    quality_exchange_days: int = Field(default=15, ge=0)
    #: Per category overrides of the two quality windows.
    quality_by_category: dict[str, QualityDays] = Field(default_factory=dict)
    #: Warranty in months from delivery, per category; a category not listed has none.
    warranty_months: dict[str, int] = Field(default_factory=dict)
    #: Category codes the service knows; an order line of any other is refused at import.
    categories: frozenset[str] = frozenset()
    reasons: frozenset[str] = frozenset()
    #: Days after payment in which a channel can still refund to the original account.
    refund_channel_days: dict[str, int] = Field(default_factory=dict)
    #: Timers by kind, and per case type overrides of them.
    timers: dict[str, TimerPolicy] = Field(default_factory=dict)
    timer_overrides: dict[str, dict[str, TimerPolicy]] = Field(default_factory=dict)
    refund_retry: RefundRetryPolicy = RefundRetryPolicy()
    #: Most items and gifts one application may carry (bad input, not a rule of the text).
    max_lines: int = Field(default=100, ge=1)

    @field_validator("warranty_months", "refund_channel_days")
    @classmethod
    def _non_negative(cls, value: dict[str, int]) -> dict[str, int]:
        bad = {k: v for k, v in value.items() if v < 0}
        if bad:
            raise ValueError(f"negative values: {bad}")
        return value

    def timer(self, kind: str, case_type: str) -> timedelta:
        override = self.timer_overrides.get(case_type, {}).get(kind)
        spec = override or self.timers.get(kind)
        if spec is None:
            raise KeyError(f"policy has no timer {kind!r}")
        return spec.delay

    def quality_refund_days_for(self, category: str) -> int:
        own = self.quality_by_category.get(category)
        days = own.refund_days if own is not None else None
        return self.quality_refund_days if days is None else days

    def quality_exchange_days_for(self, category: str) -> int:
        own = self.quality_by_category.get(category)
        days = own.exchange_days if own is not None else None
        return self.quality_exchange_days if days is None else days


def _merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def load_policy(override_file: Path | None = None) -> Policy:
    """The default policy, with ``override_file``'s keys laid over it."""
    data = tomllib.loads(DEFAULT_POLICY_FILE.read_text(encoding="utf-8"))
    if override_file is not None:
        data = _merge(data, tomllib.loads(override_file.read_text(encoding="utf-8")))
    return Policy.model_validate(data)
