"""Producers' events the broker may have lost: kept in a ledger until the service has them.

``EventResender`` (run by beat) looks at each ledger entry once it is ``resend_after_s`` old: an
event the service processed (recorded or dead-lettered) leaves the ledger, any other is sent
again and looked at again after two windows, then four, and so on, so a backlog is not flooded
with copies (docs/adr/0004). Seconds are wall-clock (``time.time``), never the service's
``Clock``: they time a message's trip through the broker, which a simulated clock does not move.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from workflow.events.ingestion import EventService

#: The n-th copy of an event is looked at again ``resend_after_s * 2**n`` after it was sent, n
#: at most this (64 windows: about an hour with the default minute).
MAX_DOUBLINGS = 6
#: A run stops taking new batches after this long, as a timer sweep does: beat's next run
#: goes on from there.
RUN_BUDGET_S = 20.0


@dataclass(frozen=True)
class Unconfirmed:
    """A ledger entry: its member name, the envelope (None when unreadable) and how many times
    the service has sent it again."""

    member: str
    envelope: dict[str, Any] | None
    resends: int


class UnconfirmedEvents(Protocol):
    """The ledger (Redis in production: ``tasks.ledger.RedisUnconfirmedEvents``)."""

    def due(self, before: float, limit: int) -> list[Unconfirmed]:
        """Up to ``limit`` entries due for a look at ``before`` or earlier, oldest first."""
        ...

    def forget(self, members: Sequence[str]) -> None: ...

    def postpone(self, entries: Sequence[Unconfirmed], until: Sequence[float]) -> None:
        """Store each entry (with its ``resends``) due again at its ``until``; an entry
        forgotten meanwhile stays forgotten."""
        ...

    def size(self) -> int: ...

    def count_due(self, before: float) -> int:
        """How many entries are due for a look at ``before``."""
        ...


@dataclass
class ResendReport:
    #: Processed by the service: left the ledger.
    confirmed: int = 0
    #: Sent again.
    resent: int = 0
    #: Unreadable entries (no envelope, or one without its ids) dropped.
    dropped: int = 0


def _ids(envelope: dict[str, Any] | None) -> tuple[str, str] | None:
    if envelope is None:
        return None
    source, event_id = envelope.get("source"), envelope.get("event_id")
    if isinstance(source, str) and isinstance(event_id, str):
        return source, event_id
    return None


@dataclass(frozen=True)
class LedgerSummary:
    #: Entries in the ledger: events sent and not yet confirmed processed.
    kept: int
    #: Of those, the ones the resender sends again at its next look.
    due: int


def summarize(ledger: UnconfirmedEvents, resend_after_s: float, now: float) -> LedgerSummary:
    """What ``/metrics`` and ``aftersales events unconfirmed`` report."""
    return LedgerSummary(ledger.size(), ledger.count_due(due_before(resend_after_s, now)))


def due_before(resend_after_s: float, now: float) -> float:
    """The ledger score at or below which an entry is due: its window has passed."""
    return now - resend_after_s


class EventResender:
    def __init__(
        self,
        ledger: UnconfirmedEvents,
        events: EventService,
        send: Callable[[dict[str, Any]], None],
        resend_after_s: float,
        wall: Callable[[], float] = time.time,
    ) -> None:
        if resend_after_s <= 0:
            raise ValueError("resend_after_s must be positive")
        self._ledger = ledger
        self._events = events
        self._send = send
        self._after = resend_after_s
        self._wall = wall

    def run(self, batch: int = 500, budget_s: float = RUN_BUDGET_S) -> ResendReport:
        """Look at the entries due now, ``batch`` at a time, until none are left or
        ``budget_s`` has passed (the next run goes on). Every event sent passes through the
        ledger, so at 2,000 events/s a run every 10 s has 20,000 entries to confirm."""
        report = ResendReport()
        now = self._wall()
        started = time.monotonic()
        while True:
            due = self._ledger.due(due_before(self._after, now), batch)
            self._settle(due, now, report)
            if len(due) < batch or time.monotonic() - started >= budget_s:
                return report

    def _settle(self, due: list[Unconfirmed], now: float, report: ResendReport) -> None:
        named = {entry.member: _ids(entry.envelope) for entry in due}
        known = self._events.known([ids for ids in named.values() if ids is not None])
        unreadable = [member for member, ids in named.items() if ids is None]
        confirmed = [member for member, ids in named.items() if ids in known]
        self._ledger.forget(unreadable + confirmed)
        report.dropped += len(unreadable)
        report.confirmed += len(confirmed)
        settled = {*unreadable, *confirmed}
        missing = [entry for entry in due if entry.member not in settled]
        for entry in missing:
            assert entry.envelope is not None
            self._send(entry.envelope)
        # The n-th copy is looked at again ``after * 2**n`` later; a score is when the window
        # starts, so the score is that look's time less one window.
        self._ledger.postpone(
            [Unconfirmed(e.member, e.envelope, e.resends + 1) for e in missing],
            [now + self._after * (2 ** min(e.resends + 1, MAX_DOUBLINGS) - 1) for e in missing],
        )
        report.resent += len(missing)
