"""Durations as people write them: ``30d``, ``12h``, ``90m``, ``45s``, ``2w`` (or a sum such as
``1d12h``), for settings and command-line options alike."""

from __future__ import annotations

import re
from datetime import timedelta

_UNITS = {"w": timedelta(weeks=1), "d": timedelta(days=1), "h": timedelta(hours=1)}
_UNITS |= {"m": timedelta(minutes=1), "s": timedelta(seconds=1)}
_PART = re.compile(r"(\d{1,6})([wdhms])")
_WHOLE = re.compile(r"\A(?:\d{1,6}[wdhms])+\Z")


def parse_duration(text: str) -> timedelta:
    """``30d`` -> 30 days. Raises ``ValueError`` (one line) for anything else, zero included."""
    compact = text.strip().lower().replace(" ", "")
    if not _WHOLE.match(compact):
        raise ValueError(
            f"{text!r} is not a duration: a number and a unit (w, d, h, m, s), e.g. 30d or 12h"
        )
    total = sum((int(n) * _UNITS[unit] for n, unit in _PART.findall(compact)), timedelta())
    if total <= timedelta(0):
        raise ValueError(f"{text!r}: a duration must be longer than zero")
    return total


def format_duration(duration: timedelta) -> str:
    """The shortest exact spelling in the largest whole unit: 30 days -> ``30d``."""
    seconds = int(duration.total_seconds())
    for unit, size in (("w", 604800), ("d", 86400), ("h", 3600), ("m", 60)):
        if seconds and seconds % size == 0:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"
