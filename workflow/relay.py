"""The outbox relay: publishes rows that transitions wrote, after their transaction committed.

Delivery is at least once, and survives a broker that loses messages. A row stays pending until
its consumer marks it completed (``complete``, after the effect ran, was skipped or failed for
good); a row published more than ``redeliver_after`` ago and still pending is published again:
the broker lost it (a Redis restart keeps nothing on disk), or its consumer died before
finishing. A relay that dies between publishing and marking rows published also makes the next
relay publish them again. Every consumer is therefore idempotent (see docs/side-effects.md), and
a republish of a message that was only slow costs a duplicate run that does nothing.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import timedelta

from workflow.clock import Clock
from workflow.model import OutboxEntry
from workflow.ports import UnitOfWorkFactory

#: How long a published row may stay uncompleted before the relay takes it for lost.
REDELIVER_AFTER = timedelta(seconds=60)


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
    ) -> int:
        """Publish pending rows in batches until none are left (or ``max_batches``); returns how
        many were published. Pending rows are those never published and, unless
        ``redeliver_after`` is None, those published more than ``redeliver_after`` ago that no
        consumer completed. Rows are locked while published, so relays running at once (a kick
        after a commit and the periodic sweep) publish disjoint rows."""
        if redeliver_after is not None and redeliver_after < timedelta(0):
            raise ValueError(f"redeliver_after must not be negative, got {redeliver_after}")
        # Fixed for the whole call: the rows this call publishes are marked published at or
        # after it, so a later batch does not take them again.
        redeliver_before = None if redeliver_after is None else self._clock.now() - redeliver_after
        published = 0
        for _ in range(max_batches):
            with self._uow() as uow:
                entries = uow.outbox.unpublished(batch, redeliver_before=redeliver_before)
                if entries:
                    # All of a batch at once: the publisher may put several rows in one message.
                    self._publish(entries)
                uow.outbox.mark_published([entry.id for entry in entries], self._clock.now())
                uow.commit()
            published += len(entries)
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
        """Rows not completed: waiting to be published, or published and not yet finished."""
        with self._uow() as uow:
            return uow.outbox.backlog()

    def oldest_pending_age(self) -> float | None:
        """Seconds since the oldest pending row was written (None when none is), for metrics."""
        with self._uow() as uow:
            return uow.outbox.oldest_pending_age(self._clock.now())
