"""The one seam for "now": the engine never reads the system time directly."""

from __future__ import annotations

import os
import tempfile
from datetime import UTC, datetime, timedelta
from typing import Protocol


class Clock(Protocol):
    def now(self) -> datetime:
        """The current time, timezone-aware UTC."""
        ...


class SystemClock:
    def now(self) -> datetime:
        return datetime.now(UTC)


class FakeClock:
    """A clock tests (and ``--now`` simulations) set and move forward by hand."""

    def __init__(self, start: datetime) -> None:
        self._now = ensure_utc(start)

    def now(self) -> datetime:
        return self._now

    def advance(self, delta: timedelta) -> datetime:
        self._now += delta
        return self._now

    def set(self, moment: datetime) -> None:
        self._now = ensure_utc(moment)


def ensure_utc(moment: datetime) -> datetime:
    """``moment`` in UTC; a naive time is refused because its zone would be a guess."""
    if moment.tzinfo is None or moment.utcoffset() is None:
        raise ValueError(f"time {moment.isoformat()} has no timezone")
    return moment.astimezone(UTC)


class FileClock:
    """A clock shared by separate processes: the time written in a file, else the system time.

    Simulations and end-to-end tests move the workers' time forward days by writing an ISO 8601
    instant into the file (``AFTERSALES_CLOCK_FILE``); each reading re-reads it, so every worker
    and beat process sees the same "now" without restarting. Never set in production.
    """

    def __init__(self, path: str) -> None:
        self._path = path

    def now(self) -> datetime:
        try:
            with open(self._path, encoding="utf-8") as handle:
                text = handle.read().strip()
        except FileNotFoundError:
            return datetime.now(UTC)
        return ensure_utc(datetime.fromisoformat(text)) if text else datetime.now(UTC)

    def set(self, moment: datetime) -> None:
        """Write ``moment`` atomically, so a reader never sees half a timestamp."""
        directory = os.path.dirname(os.path.abspath(self._path))
        fd, temporary = tempfile.mkstemp(dir=directory)
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(ensure_utc(moment).isoformat())
        os.replace(temporary, self._path)

    def advance(self, delta: timedelta) -> datetime:
        moment = self.now() + delta
        self.set(moment)
        return moment
