"""Ingestion: apply each inbound event once, or keep it as a dead letter with its reason.

``EventService`` applies an event in one transaction with the record of its (source, event id),
so a redelivery changes nothing; an event that cannot apply is kept as a dead letter, to be
listed, replayed or discarded. Nothing is dropped.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from enum import StrEnum
from typing import Any

from config.sources import Sources, default_sources
from workflow import channels
from workflow.clock import Clock
from workflow.errors import (
    AftersalesError,
    Conflict,
    IngestFailed,
    InvalidInput,
    NotFound,
    StateConflict,
)
from workflow.events.envelope import (
    ORDER_EVENT_TYPES,
    Envelope,
    as_document,
    parse_envelope,
    source_and_event_id,
)
from workflow.events.lookup import BatchReads, find_case
from workflow.events.mapping import EVENT_RULES, plan
from workflow.events.orders import apply_order_event
from workflow.events.scope import check_source
from workflow.model import Case, DeadLetter, DeadLetterStatus
from workflow.ports import UnitOfWork, UnitOfWorkFactory
from workflow.service import CaseService
from workflow.states import CaseState

#: How often an event is planned and fired again when a concurrent transition moved its case
#: first; past that the ``Conflict`` propagates and the caller (a Celery task) retries later.
CONFLICT_ATTEMPTS = 3
#: Events applied per transaction by ``EventService.ingest_many``: a commit waits for the disk
#: (about 1 ms on PostgreSQL with fsync), shared by the batch; beyond about a hundred the share
#: is small beside the events' own statements (bench/ingest_batch.py), while a longer
#: transaction holds its cases' row locks longer and, on PostgreSQL, every savepoint that wrote
#: takes a subtransaction id (past 64 in one transaction, other sessions' snapshots get slower).
MAX_BATCH = 50


class IngestStatus(StrEnum):
    #: The event moved its case.
    APPLIED = "applied"
    #: (source, event_id) was processed before; nothing was written.
    DUPLICATE = "duplicate"
    #: Acknowledged and recorded without a transition (stale, or already true); see ``reason``.
    IGNORED = "ignored"
    #: Could not apply; kept as a dead letter (``letter_id``) with ``code`` and ``reason``.
    DEAD_LETTERED = "dead_lettered"


@dataclass(frozen=True)
class IngestResult:
    status: IngestStatus
    source: str
    event_id: str | None
    type: str | None = None
    case_id: int | None = None
    #: The trigger the event maps to (fired, or refused for a dead letter).
    trigger: str | None = None
    #: Triggers fired before ``trigger`` because the event implied them (a pickup).
    implied: tuple[str, ...] = ()
    #: The case's state afterwards, when known.
    state: CaseState | None = None
    reason: str | None = None
    #: The error code of a dead letter (``not_found``, ``not_allowed``, ``invalid_input``, ...).
    code: str | None = None
    letter_id: int | None = None

    def as_json(self) -> dict[str, Any]:
        return {
            "status": self.status.value,
            "source": self.source,
            "event_id": self.event_id,
            "type": self.type,
            "case_id": self.case_id,
            "trigger": self.trigger,
            "implied": list(self.implied),
            "state": self.state.value if self.state else None,
            "reason": self.reason,
            "code": self.code,
            "letter_id": self.letter_id,
        }


class _Refused(Exception):
    """An event that cannot apply, with what was known when it was refused."""

    def __init__(
        self, error: AftersalesError, case_id: int | None = None, trigger: str | None = None
    ) -> None:
        super().__init__(str(error))
        self.error, self.case_id, self.trigger = error, case_id, trigger


class _StopBatch(Exception):
    """A batch stops at this event (a concurrent transition moved its case): the events
    before it commit, it and the rest continue outside the transaction."""


class EventService:
    """Ingests inbound events: applies, deduplicates, ignores or dead-letters each one.

    ``ingest`` never raises for a bad event (it becomes a dead letter); errors of the
    infrastructure (the database is down) propagate, so a Celery task retries the event.
    """

    def __init__(
        self,
        case_service: CaseService,
        uow_factory: UnitOfWorkFactory,
        clock: Clock,
        max_batch: int = MAX_BATCH,
        sources: Sources | None = None,
    ) -> None:
        if max_batch < 1:
            raise ValueError("max_batch must be at least 1")
        #: The producers and their kinds; an event outside its source's kind is a dead letter.
        self.sources = sources if sources is not None else default_sources()
        self._cases = case_service
        self._uow = uow_factory
        self.clock = clock
        #: Events applied per transaction by ``ingest_many``.
        self.max_batch = max_batch

    # -- ingestion -------------------------------------------------------------------------------
    def ingest(self, raw: Any) -> IngestResult:
        """Apply one event (an envelope dict, or its JSON text) in one transaction."""
        try:
            envelope, document = parse_envelope(raw)
        except InvalidInput as error:
            return self._dead_letter(as_document(raw), _Refused(error))
        for attempt in range(1, CONFLICT_ATTEMPTS + 1):
            try:
                return self._apply_alone(envelope, document)
            except Conflict:
                # A concurrent transition moved the case between our read and our write:
                # plan again on its new state.
                if attempt == CONFLICT_ATTEMPTS:
                    raise
        raise AssertionError("unreachable")  # pragma: no cover

    def _apply_alone(self, envelope: Envelope, document: dict[str, Any]) -> IngestResult:
        with self._uow() as uow:
            try:
                result = self._apply(uow, envelope)
            except _Refused as refused:
                # Nothing of the refused event stays, not even its record: a redelivery
                # (after the case or the code was fixed) is tried again.
                uow.rollback()
                result = self._letter_in(uow, document, refused, envelope)
            uow.commit()
        if result.status is IngestStatus.APPLIED:
            self._cases.outbox_written()
        return result

    def ingest_many(self, raws: Iterable[Any]) -> list[IngestResult]:
        """Apply events in the given order, ``max_batch`` to a transaction; one outcome each.

        Each event runs in a savepoint, so a malformed, refused or duplicate one gets its own
        outcome (a dead letter, ...) without undoing the others, and each applied one is still
        its case's compare-and-set with its log, timers, outbox and dedupe record. An event
        whose case a concurrent transition moved ends the transaction there: what came before
        commits, that event is applied alone (planned again on the new state), and the rest
        continue in a new batch, so events of one case keep their order. When the transaction
        itself fails (serialization failure, deadlock, lost connection) its events are applied
        again one per transaction: the dedupe record makes any that did commit a duplicate.
        """
        pending = list(raws)
        results: list[IngestResult] = []
        while pending:
            batch, pending = pending[: self.max_batch], pending[self.max_batch :]
            done = self._ingest_batch(batch)
            results.extend(done)
            if len(done) < len(batch):
                # Stopped at an event that lost a race: alone, then the rest batch again.
                results.append(self.ingest(batch[len(done)]))
                pending = batch[len(done) + 1 :] + pending
        return results

    def _ingest_batch(self, raws: list[Any]) -> list[IngestResult]:
        """The outcomes of a prefix of ``raws`` (all of them unless one lost a race)."""
        if len(raws) == 1:
            return [self.ingest(raws[0])]
        results: list[IngestResult] = []
        parsed = [_parse(raw) for raw in raws]
        try:
            with self._uow() as uow:
                envelopes = [p[0] for p in parsed if isinstance(p, tuple)]
                reads = BatchReads(
                    # One read for the cases the events name by id, with their live timers.
                    by_id=uow.cases.get_many([e.case_id for e in envelopes if e.case_id]),
                    # One for the events recorded before: the others are recorded as checked
                    # writes that ride with the next statement, no round trip per event. One
                    # recorded meanwhile by a concurrent delivery fails the batch's commit,
                    # and the batch goes one event per transaction (below), where it is a
                    # duplicate.
                    recorded=uow.events.recorded([(e.source, e.event_id) for e in envelopes]),
                    # One for the cases of the orders that events name without a case id (a
                    # carrier's first scan names the order and the parcel).
                    by_order=uow.cases.of_orders(
                        [
                            e.order_id
                            for e in envelopes
                            if e.case_id is None and e.order_id and e.type not in ORDER_EVENT_TYPES
                        ]
                    ),
                )
                for raw, parse in zip(raws, parsed, strict=True):
                    try:
                        results.append(self._apply_in_batch(uow, raw, parse, reads))
                    except _StopBatch:
                        break
                uow.commit()
        except Exception:
            # The batch did not commit, or we cannot know it did: one event per transaction
            # is the reference behaviour, finds what did commit a duplicate, and raises again
            # what is not a passing failure (the task then retries the whole batch).
            return [self.ingest(raw) for raw in raws]
        if any(result.status is IngestStatus.APPLIED for result in results):
            self._cases.outbox_written()
        return results

    def _apply_in_batch(
        self,
        uow: UnitOfWork,
        raw: Any,
        parsed: tuple[Envelope, dict[str, Any]] | InvalidInput,
        reads: BatchReads,
    ) -> IngestResult:
        if isinstance(parsed, InvalidInput):
            return self._letter_in(uow, as_document(raw), _Refused(parsed))
        envelope, document = parsed
        try:
            with uow.savepoint():
                result = self._apply(uow, envelope, reads)
            # Recorded now (unless a duplicate): a copy later in the batch is a duplicate.
            reads.recorded.add((envelope.source, envelope.event_id))
            return result
        except _Refused as refused:
            return self._letter_in(uow, document, refused, envelope)
        except Conflict:
            raise _StopBatch() from None

    def _apply(
        self,
        uow: UnitOfWork,
        envelope: Envelope,
        reads: BatchReads | None = None,
    ) -> IngestResult:
        """Resolve, record, plan and fire ``envelope`` in ``uow``; the caller commits.
        ``reads``: what a batch read at its start in ``uow`` (cases, recorded events), used
        instead of reading again.

        Raises ``_Refused`` for an event that cannot apply (the caller rolls back what this
        wrote and keeps a dead letter instead) and ``Conflict`` when a concurrent transition
        moved the case between our read and our write.
        """
        source, event_id = envelope.source, envelope.event_id
        try:
            check_source(envelope, self.sources)
        except AftersalesError as error:
            raise _Refused(error, envelope.case_id) from None
        if envelope.type in ORDER_EVENT_TYPES:
            return self._apply_to_order(uow, envelope, reads)
        now = self.clock.now()
        # The record comes first: a redelivered event is a duplicate whatever happened to its
        # case since. It commits with the transition (or the acknowledgement) it led to; on
        # PostgreSQL a concurrent delivery of the same event waits on it, then sees it.
        recorded: bool | None = None
        named = reads.by_id if reads is not None else None
        named_id = envelope.case_id
        if named_id is not None and not (named and named_id in named):
            # The record and the read of the case the event names (one statement where the
            # store can: ``EventStore.record``). When the event is refused below, the record
            # goes with the rollback, as it always did.
            recorded = uow.events.record(source, event_id, named_id, now)
            read = uow.cases.get(named_id)
            named = {named_id: read} if read is not None else None
        try:
            case = find_case(uow, envelope, named, reads.by_order if reads is not None else None)
        except Conflict:
            # An earlier write of the batch lost its race and surfaced at this read.
            raise
        except AftersalesError as error:
            if recorded is None:
                recorded = uow.events.record(source, event_id, None, now)
            if not recorded:
                return self._result(envelope, IngestStatus.DUPLICATE)
            raise _Refused(error) from None
        assert case.id is not None
        if reads is not None:
            # This case is about to change: no later event of the batch may use a copy of it.
            reads.drop_copies_of(case)
        if recorded is None:
            recorded = _record(uow, envelope, case.id, now, reads)
        if not recorded:
            return self._result(envelope, IngestStatus.DUPLICATE, case)
        try:
            decided = plan(envelope, case)
        except AftersalesError as error:
            raise _Refused(error, case.id, EVENT_RULES[envelope.type].fallback) from None
        if not decided.triggers:
            reason = f"{decided.note} (case {case.id} is {case.state.value})"
            return self._result(envelope, IngestStatus.IGNORED, case, reason=reason)
        first, *then = decided.triggers
        trigger, implied = decided.triggers[-1], decided.triggers[:-1]
        try:
            # The case as read above, in this transaction: its version is what the write
            # compares, so a case moved since is a Conflict, planned again by the caller.
            fired = self._cases.transition(
                uow,
                case,
                first,
                decided.actor,
                decided.data,
                decided.reason,
                idempotency_key=f"event:{source}:{event_id}",
                then=then,
                source=channels.event(source, event_id),
            )
        except Conflict:
            raise  # not the event's fault
        except AftersalesError as error:
            raise _Refused(error, case.id, trigger) from None
        return IngestResult(
            IngestStatus.APPLIED,
            source,
            event_id,
            envelope.type.value,
            case.id,
            trigger,
            implied,
            fired.case.state,
            decided.note or None,
        )

    def _apply_to_order(
        self, uow: UnitOfWork, envelope: Envelope, reads: BatchReads | None
    ) -> IngestResult:
        """An ``order.*`` event: recorded (for deduplication) and applied to its order of
        record in ``uow``; no case moves."""
        key = (envelope.source, envelope.event_id)
        if reads is not None and key in reads.recorded:
            return self._result(envelope, IngestStatus.DUPLICATE)
        if not uow.events.record(*key, None, self.clock.now()):
            return self._result(envelope, IngestStatus.DUPLICATE)
        try:
            note = apply_order_event(uow, envelope, self._cases.policy, self.clock.now())
        except (InvalidInput, NotFound) as error:
            raise _Refused(error) from None
        return IngestResult(IngestStatus.APPLIED, *key, envelope.type.value, reason=note)

    def _result(
        self,
        envelope: Envelope,
        status: IngestStatus,
        case: Case | None = None,
        reason: str | None = None,
    ) -> IngestResult:
        if status is IngestStatus.DUPLICATE and reason is None:
            reason = f"event {envelope.event_id} from {envelope.source} was processed before"
        return IngestResult(
            status,
            envelope.source,
            envelope.event_id,
            envelope.type.value,
            case.id if case else None,
            state=case.state if case else None,
            reason=reason,
        )

    def _dead_letter(
        self, document: dict[str, Any], refused: _Refused, envelope: Envelope | None = None
    ) -> IngestResult:
        with self._uow() as uow:
            result = self._letter_in(uow, document, refused, envelope)
            uow.commit()
        return result

    def _letter_in(
        self,
        uow: UnitOfWork,
        document: dict[str, Any],
        refused: _Refused,
        envelope: Envelope | None = None,
    ) -> IngestResult:
        """Keep the refused event as a dead letter in ``uow``; the caller commits."""
        source, event_id = (
            (envelope.source, envelope.event_id) if envelope else source_and_event_id(document)
        )
        reason = str(refused.error)
        letter = DeadLetter(
            source, event_id, document, reason, refused.error.code, self.clock.now()
        )
        letter_id = uow.events.dead_letter(letter)
        return IngestResult(
            IngestStatus.DEAD_LETTERED,
            source,
            event_id,
            envelope.type.value if envelope else _text(document.get("type")),
            refused.case_id,
            refused.trigger,
            reason=reason,
            code=refused.error.code,
            letter_id=letter_id,
        )

    def keep_failed(self, raws: Sequence[Any], error: str) -> list[IngestResult]:
        """Keep events whose ingestion failed for a reason that is ours, not the event's (a
        bug, a failure that outlasted every retry) as dead letters with code
        ``ingest_failed``: visible, and replayable once fixed, instead of dropped with the
        message. Events that did apply are left alone (the dedupe record tells)."""
        results = []
        for raw in raws:
            document = as_document(raw)
            source, event_id = source_and_event_id(document)
            if event_id is not None:
                with self._uow() as uow:
                    # Rolled back: only asks whether the event's record exists.
                    if not uow.events.record(source, event_id, None, self.clock.now()):
                        continue
            results.append(self._dead_letter(document, _Refused(IngestFailed(error))))
        return results

    # -- dead letters ----------------------------------------------------------------------------
    def known(self, ids: Sequence[tuple[str, str]]) -> set[tuple[str, str]]:
        """Which of these (source, event_id) the service has processed: applied, ignored,
        duplicate or dead-lettered; the others never arrived (or not yet)."""
        if not ids:
            return set()
        with self._uow() as uow:
            return uow.events.known(ids)

    def dead_letters(
        self,
        status: DeadLetterStatus | None = DeadLetterStatus.OPEN,
        after_id: int | None = None,
        limit: int = 50,
    ) -> list[DeadLetter]:
        """Dead letters by id; ``status`` None lists all; ``after_id`` pages."""
        with self._uow() as uow:
            return uow.events.dead_letters(status, after_id, limit)

    def dead_letter(self, letter_id: int) -> DeadLetter:
        with self._uow() as uow:
            return _letter(uow, letter_id)

    def replay(self, letter_id: int, actor: str, reason: str) -> IngestResult:
        """Ingest an open dead letter's envelope again (after the case or the code was fixed).

        When it now applies, is ignored, or turns out processed meanwhile (a redelivery got
        through), the letter is marked replayed, by ``actor`` for ``reason``. When it still
        fails, the letter stays open with one more attempt and the new reason.
        """
        _check_resolution(actor, reason)
        letter = self.dead_letter(letter_id)
        if letter.status is not DeadLetterStatus.OPEN:
            raise StateConflict(
                f"dead letter {letter_id} is {letter.status.value}; only open letters replay",
                "letter",
            )
        try:
            envelope, _document = parse_envelope(letter.envelope)
        except InvalidInput as error:
            # No valid envelope: it can never apply as it stands, and without an event id a new
            # dead letter would not find this one to count the attempt on.
            raise StateConflict(
                f"dead letter {letter_id} is still malformed ({error}); discard it"
            ) from None
        if (envelope.source, envelope.event_id) != (letter.source, letter.event_id):
            raise StateConflict(f"dead letter {letter_id} does not match its envelope's id")
        result = self.ingest(letter.envelope)
        if result.status is IngestStatus.DEAD_LETTERED:
            return result
        with self._uow() as uow:
            uow.events.resolve_dead_letter(
                letter_id, DeadLetterStatus.REPLAYED, self.clock.now(), actor, reason.strip()
            )
            uow.commit()
        return _with_letter(result, letter_id)

    def discard(self, letter_id: int, actor: str, reason: str) -> DeadLetter:
        """Set an open dead letter aside: looked at by ``actor``, will not apply, ``reason``."""
        _check_resolution(actor, reason)
        with self._uow() as uow:
            letter = _letter(uow, letter_id)
            if letter.status is not DeadLetterStatus.OPEN:
                raise StateConflict(
                    f"dead letter {letter_id} is {letter.status.value}, not open", "letter"
                )
            now = self.clock.now()
            uow.events.resolve_dead_letter(
                letter_id, DeadLetterStatus.DISCARDED, now, actor, reason.strip()
            )
            uow.commit()
        letter.status, letter.resolved_at = DeadLetterStatus.DISCARDED, now
        letter.resolved_by, letter.resolution = actor, reason.strip()
        return letter


def _check_resolution(actor: str, reason: str) -> None:
    """A dead letter is resolved by someone, for a reason: both are kept with it."""
    if not actor.strip():
        raise InvalidInput("name who replays or discards the letter", "actor")
    if not reason.strip():
        raise InvalidInput("give a reason for replaying or discarding the letter", "reason")


def _letter(uow: UnitOfWork, letter_id: int) -> DeadLetter:
    letter = uow.events.get_dead_letter(letter_id)
    if letter is None:
        raise NotFound(f"no dead letter {letter_id}")
    return letter


def _with_letter(result: IngestResult, letter_id: int) -> IngestResult:
    return replace(result, letter_id=letter_id)


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) else None


def _record(
    uow: UnitOfWork,
    envelope: Envelope,
    case_id: int,
    now: datetime,
    reads: BatchReads | None,
) -> bool:
    """Record the event for its case; False if it was recorded before. In a batch (which read
    the recorded events at its start) a new one is a checked write with no answer to wait for
    (the store knows it read the event as not recorded: ``EventStore.record``)."""
    key = (envelope.source, envelope.event_id)
    if reads is not None and key in reads.recorded:
        return False
    return uow.events.record(*key, case_id, now)


def _parse(raw: Any) -> tuple[Envelope, dict[str, Any]] | InvalidInput:
    try:
        return parse_envelope(raw)
    except InvalidInput as error:
        return error
