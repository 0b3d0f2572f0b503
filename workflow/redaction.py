"""Secrets in what we show or log: bank account numbers keep only their last four digits."""

from __future__ import annotations

from typing import Any

#: Keys (at any depth) whose values are masked to their last 4 characters.
SECRET_KEYS = frozenset({"account_no"})


def mask(value: str) -> str:
    """``6222020200112233`` -> ``************2233``: enough for the buyer to recognise it."""
    return "*" * max(len(value) - 4, 0) + value[-4:]


def masked(value: Any) -> Any:
    """``value`` (details, log data, an event) with every secret key's value masked."""
    if isinstance(value, dict):
        return {
            key: mask(str(item)) if key in SECRET_KEYS and item is not None else masked(item)
            for key, item in value.items()
        }
    if isinstance(value, list):
        return [masked(item) for item in value]
    return value
