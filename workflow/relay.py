"""The outbox relay: publishes rows that transitions wrote, after their transaction committed.

Delivery is at least once, and survives a broker that loses messages. A row stays pending until
its consumer marks it completed (``complete``, after the effect ran, was skipped or failed for
good); a row published more than ``redeliver_after`` ago and still pending is published again:
the broker lost it (a Redis restart keeps nothing on disk), or its consumer died before
finishing. A relay that dies between publishing and marking rows published also makes the next
relay publish them again. Every consumer is therefore idempotent (see docs/side-effects.md), and
a republish of a message that was only slow costs a duplicate run that does nothing.

A row whose consumer keeps failing (a bug, a payload it cannot handle) would be published every
``redeliver_after`` forever. After ``max_attempts`` publishes the relay parks it instead: it
stays uncompleted, is no longer published, and waits for an operator (``parked``, ``retry``).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import timedelta

from workflow.clock import Clock
from workflow.errors import InvalidInput
from workflow.model import OutboxEntry
from workflow.ports import UnitOfWorkFactory

#: How long a published row may stay uncompleted before the relay takes it for lost.
REDELIVER_AFTER = timedelta(seconds=60)
#: Publishes of a row that no consumer completed before the relay parks it (the default of
#: ``WorkerSettings.outbox_max_attempts``).
MAX_ATTEMPTS = 10
#: Rows one ``retry`` call takes: the retries run in one transaction.
MAX_RETRY_IDS = 1000
#: The longest reason a retry keeps (characters), as a transition's free text.
MAX_REASON = 2000

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class RetryResult:
    #: The rows made fresh, as they were before (attempts, parking time).
    retried: list[OutboxEntry]
    #: Ids named that are not parked: unknown, completed, or retried already.
    not_parked: list[int]


class OutboxRelay:
    def __init__(
        self,
        uow_factory: UnitOfWorkFactory,
        publish: Callable[[Sequence[OutboxEntry]], None],
        clock: Clock,
    ) -> None:
        self._uow = uow_factory
        self._publish = publish
        self._clock = clock

    def relay(
        self,
        batch: int = 200,
        max_batches: int = 50,
        redeliver_after: timedelta | None = REDELIVER_AFTER,
        max_attempts: int = MAX_ATTEMPTS,
    ) -> int:
        """Publish pending rows in batches until none are left (or ``max_batches``); returns how
        many were published. Pending rows are those never published and, unless
        ``redeliver_after`` is None, those published more than ``redeliver_after`` ago that no
        consumer completed; of the latter, those published ``max_attempts`` times already are
        parked instead. Rows are locked while published, so relays running at once (a kick
        after a commit and the periodic sweep) publish disjoint rows."""
        if redeliver_after is not None and redeliver_after < timedelta(0):
            raise ValueError(f"redeliver_after must not be negative, got {redeliver_after}")
        if max_attempts < 1:
            raise ValueError(f"max_attempts must be at least 1, got {max_attempts}")
        # Fixed for the whole call: the rows this call publishes are marked published at or
        # after it, so a later batch does not take them again.
        redeliver_before = None if redeliver_after is None else self._clock.now() - redeliver_after
        published = 0
        for _ in range(max_batches):
            with self._uow() as uow:
                entries = uow.outbox.unpublished(batch, redeliver_before=redeliver_before)
                # Only a lost row can have used up its attempts (a fresh one has none).
                spent = [entry for entry in entries if entry.attempts >= max_attempts]
                due = [entry for entry in entries if entry.attempts < max_attempts]
                if due:
                    # All of a batch at once: the publisher may put several rows in one message.
                    self._publish(due)
                now = self._clock.now()
                uow.outbox.mark_published([entry.id for entry in due], now)
                uow.outbox.park([entry.id for entry in spent], now)
                uow.commit()
            for entry in spent:
                logger.warning(
                    "outbox entry %d (%s, case %d) parked: published %d times, never completed; "
                    "`aftersales outbox retry %d` sends it again",
                    entry.id,
                    entry.topic,
                    entry.case_id,
                    entry.attempts,
                    entry.id,
                )
            published += len(due)
            if len(entries) < batch:
                break
        return published

    def complete(self, *entry_ids: int) -> None:
        """A consumer finished with the rows (done, skipped, or failed for good): they are never
        published again. Idempotent."""
        with self._uow() as uow:
            uow.outbox.mark_completed(entry_ids, self._clock.now())
            uow.commit()

    def postpone(self, seconds: float, *entry_ids: int) -> None:
        """The consumer retries in ``seconds``: no redelivery before that retry had its chance."""
        with self._uow() as uow:
            until = self._clock.now() + timedelta(seconds=seconds)
            for entry_id in entry_ids:
                uow.outbox.postpone(entry_id, until)
            uow.commit()

    def backlog(self) -> int:
        """Rows not completed nor parked: waiting to be published, or published and not yet
        finished."""
        with self._uow() as uow:
            return uow.outbox.backlog()

    def oldest_pending_age(self) -> float | None:
        """Seconds since the oldest pending row was written (None when none is), for metrics."""
        with self._uow() as uow:
            return uow.outbox.oldest_pending_age(self._clock.now())


class ParkedOutbox:
    """What an operator does with the rows the relay parked: list them, send them again."""

    def __init__(self, uow_factory: UnitOfWorkFactory, clock: Clock) -> None:
        self._uow = uow_factory
        self._clock = clock

    def parked(self, limit: int, after_id: int = 0) -> list[OutboxEntry]:
        """Parked rows not completed since, by id, above ``after_id``."""
        with self._uow() as uow:
            return uow.outbox.parked(limit, after_id)

    def retry(self, entry_ids: Sequence[int], by: str, reason: str) -> RetryResult:
        """Make these parked rows fresh, in one transaction: the relay publishes them at its
        next run, with the whole attempt budget. Each retry is recorded with ``by`` (who) and
        ``reason``. Ids that are not parked are reported, not refused: the others go on."""
        if not by.strip():
            raise InvalidInput("name who retries the entries", "actor")
        reason = reason.strip()
        if not reason:
            raise InvalidInput("give a reason for retrying the entries", "reason")
        if len(reason) > MAX_REASON:
            raise InvalidInput(f"at most {MAX_REASON} characters", "reason")
        unique = list(dict.fromkeys(entry_ids))
        if not unique:
            raise InvalidInput("name at least one outbox entry", "ids")
        if len(unique) > MAX_RETRY_IDS:
            raise InvalidInput(
                f"at most {MAX_RETRY_IDS} outbox entries per retry, got {len(unique)}", "ids"
            )
        retried: list[OutboxEntry] = []
        missing: list[int] = []
        with self._uow() as uow:
            now = self._clock.now()
            for entry_id in unique:
                entry = uow.outbox.retry(entry_id, now, by, reason)
                if entry is None:
                    missing.append(entry_id)
                else:
                    retried.append(entry)
            uow.commit()
        return RetryResult(retried, missing)
