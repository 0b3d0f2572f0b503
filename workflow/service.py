"""The service layer: every use of the engine runs here, one unit of work per call.

Each transition is one transaction: the case row compared-and-set on its version, its log rows,
the timer disarmed and the next one armed, and its outbox rows. Nothing is written when any step
refuses.
"""

from __future__ import annotations

import builtins
from collections.abc import Callable, Sequence
from dataclasses import replace
from datetime import datetime, timedelta
from typing import Any

from pydantic import ValidationError

from config.policy import Policy
from workflow import channels, engine, orders, rules
from workflow.clock import Clock, ensure_utc
from workflow.errors import (
    Conflict,
    Forbidden,
    IdempotencyKeyReused,
    InvalidInput,
    NotFound,
    StateConflict,
)
from workflow.model import (
    SYSTEM,
    Actor,
    Case,
    Timer,
    TransitionRecord,
)
from workflow.orders import Order, OrderLine
from workflow.payloads import (
    Application,
    Deadline,
    describe_validation_error,
    parse_application,
)
from workflow.ports import UnitOfWork, UnitOfWorkFactory
from workflow.queries import (
    CasePage,
    CaseQuery,
    Cursor,
    MerchantFigures,
    check_query,
    figures_scope,
    sort_key,
    visible_to,
)

# What the service answers; its callers import these from here too (re-exported).
from workflow.results import CaseView as CaseView
from workflow.results import FireResult as FireResult
from workflow.results import TimerRun as TimerRun
from workflow.states import Role

#: Default of ``CaseService.timer_batch``.
TIMER_BATCH = 50
#: Default of ``CaseService.max_deadline_extension`` (``AFTERSALES_MAX_DEADLINE_EXTENSION``).
MAX_DEADLINE_EXTENSION = timedelta(days=30)
#: A timer whose case a concurrent transition moved between the read and the write: it stays
#: claimed and is claimed again after the reclaim delay, then fires or turns out stale.
CONFLICT_OUTCOME = "conflict: the case moved meanwhile"


class CaseService:
    def __init__(
        self,
        uow_factory: UnitOfWorkFactory,
        clock: Clock,
        policy: Policy,
        outbox_written: Callable[[], None] | None = None,
        timer_batch: int = TIMER_BATCH,
        max_deadline_extension: timedelta = MAX_DEADLINE_EXTENSION,
    ) -> None:
        if timer_batch < 1:
            raise ValueError("timer_batch must be at least 1")
        if max_deadline_extension <= timedelta(0):
            raise ValueError("max_deadline_extension must be longer than zero")
        self._uow = uow_factory
        self.clock = clock
        self.policy = policy
        # Called after a commit that wrote outbox rows, so a relay can publish them at once;
        # the periodic relay sweep is the safety net when this kick is lost.
        self._outbox_written = outbox_written or (lambda: None)
        #: Timers fired per transaction by ``fire_timers``; each commit waits for the disk,
        #: so a batch shares that wait (bench/ingest_batch.py measures it).
        self.timer_batch = timer_batch
        #: How far one admin extension may move a deadline (``extend_deadline``).
        self.max_deadline_extension = max_deadline_extension

    @property
    def uow_factory(self) -> UnitOfWorkFactory:
        """The units of work this service runs on (for services beside it, e.g. orders)."""
        return self._uow

    # -- submission -----------------------------------------------------------------------
    def submit(
        self,
        raw: dict[str, Any] | Application,
        actor: Actor | None = None,
        idempotency_key: str | None = None,
        source: str | None = None,
    ) -> CaseView:
        """Apply for after-sales; refused applications create nothing. ``source``: the channel
        it came through, for the log (``workflow.channels``)."""
        app = raw if isinstance(raw, Application) else parse_application(raw)
        if actor is not None and actor.role is Role.BUYER and actor.id != app.buyer_id:
            raise Forbidden("a buyer applies only for its own orders")
        if actor is not None and actor.role not in (Role.BUYER, Role.ADMIN):
            raise Forbidden(f"a {actor.role.value} cannot submit applications")
        if len(app.items) + len(app.gifts or ()) > self.policy.max_lines:
            raise InvalidInput(f"at most {self.policy.max_lines} items and gifts", "items")
        now = self.clock.now()
        with self._uow() as uow:
            if idempotency_key:
                # Before the rules: a retried submission gets its case even after the window.
                earlier = uow.cases.by_submission_key(idempotency_key)
                if earlier is not None:
                    return CaseView(earlier, uow.timers.pending(_id(earlier)))
            # Held to the commit: submissions of one order are serialised, so the account read
            # below stays true until this case is written.
            order = orders.owned_order(uow.orders.lock(app.order_id), app.order_id, app.buyer_id)
            if idempotency_key:
                # Again under the order lock: a concurrent twin may have committed meanwhile.
                earlier = uow.cases.by_submission_key(idempotency_key)
                if earlier is not None:
                    return CaseView(earlier, uow.timers.pending(_id(earlier)))
            lines = orders.lines_applied_for(order, app)
            # Eligibility per line, from the order of record (the lines share one category).
            facts = [_eligibility_facts(app, order, line) for line in lines]
            for line_facts in facts:
                rules.check_eligibility(line_facts, self.policy, now)
            account = orders.account(order, _cases_of(uow, order.order_id))
            base = orders.claim(account, app)
            case = orders.case_from_order(
                app, order, lines, base, account.refundable, now, idempotency_key
            )
            case.details["merchant_consent_required"] = rules.merchant_consent_required(facts[0])
            case.id = uow.cases.add(case)
            record = TransitionRecord(
                case.id,
                1,
                "submit",
                None,
                case.state,
                str(actor or Actor(Role.BUYER, app.buyer_id)),
                now,
                idempotency_key=idempotency_key,
                source=source,
            )
            uow.log.append([record])
            # RULES.md C: an order not shipped yet is refunded at once, no review to wait for.
            at_once = rules.refund_at_once(facts[0])
            deadline = None if at_once else engine.timer_for(case, self.policy, now, None)
            if deadline is not None:
                uow.timers.arm(deadline)
            uow.outbox.add(engine.messages_for(case, record))
            if at_once:
                deadline = self.transition(uow, case, "auto_approve", SYSTEM).deadline
            uow.commit()
        self._outbox_written()
        return CaseView(case, deadline)

    # -- transitions ------------------------------------------------------------------------
    def fire(
        self,
        case_id: int,
        trigger: str,
        actor: Actor,
        data: dict[str, Any] | None = None,
        reason: str | None = None,
        idempotency_key: str | None = None,
        expected_version: int | None = None,
        then: Sequence[str] = (),
        source: str | None = None,
    ) -> FireResult:
        """Fire ``trigger`` (and ``then``: triggers the same actor fires right after it with the
        same data, in the same transaction, e.g. a delivery that implies the pickup).
        ``source``: the channel it came through, for the log (``workflow.channels``)."""
        try:
            return self._fire(
                case_id,
                trigger,
                actor,
                data,
                reason,
                idempotency_key,
                expected_version,
                then,
                source,
            )
        except Conflict:
            if not idempotency_key:
                raise
            # A concurrent call with the same key may have won: then its result is ours.
            with self._uow() as uow:
                earlier = uow.log.by_key(case_id, idempotency_key)
                if not earlier:
                    raise
                _check_same_call(case_id, idempotency_key, earlier, trigger)
                case = _get(uow, case_id)
                return FireResult(case, uow.timers.pending(case_id), earlier, replayed=True)

    def _fire(
        self,
        case_id: int,
        trigger: str,
        actor: Actor,
        data: dict[str, Any] | None,
        reason: str | None,
        idempotency_key: str | None,
        expected_version: int | None,
        then: Sequence[str],
        source: str | None,
    ) -> FireResult:
        with self._uow() as uow:
            case = _get(uow, case_id)
            if idempotency_key:
                earlier = uow.log.by_key(case_id, idempotency_key)
                if earlier:
                    engine.check_owner(case, actor)
                    _check_same_call(case_id, idempotency_key, earlier, trigger)
                    return FireResult(case, uow.timers.pending(case_id), earlier, replayed=True)
            if expected_version is not None and expected_version != case.version:
                engine.check_owner(case, actor)
                raise Conflict(
                    f"case {case_id} is at version {case.version}, not {expected_version}",
                    case.version,
                )
            result = self.transition(
                uow, case, trigger, actor, data, reason, idempotency_key, then, source
            )
            uow.commit()
        self._outbox_written()
        return result

    def transition(
        self,
        uow: UnitOfWork,
        case: Case,
        trigger: str,
        actor: Actor,
        data: dict[str, Any] | None = None,
        reason: str | None = None,
        idempotency_key: str | None = None,
        then: Sequence[str] = (),
        source: str | None = None,
    ) -> FireResult:
        """Fire ``trigger`` (and ``then``) on ``case``, as read in ``uow``, and write it all there:
        the case compared-and-set on the version it was read at, log, timers, outbox. The
        caller commits, then calls ``outbox_written``; ``Conflict`` when a concurrent
        transition moved the case since it was read.

        For callers that read the case themselves and write more in the same transaction
        (an inbound event and its dedupe record, a batch of events)."""
        case_id = _id(case)
        if trigger == "revise":
            # A revision may ask for more: cap it by what the order has left now.
            order = uow.orders.lock(case.order_id)
            if order is not None:
                others = [c for c in _cases_of(uow, case.order_id) if c.id != case_id]
                case.details["refund_cap"] = orders.account(order, others).refundable
        previous = uow.timers.pending(case_id)
        context = engine.Context(self.policy, self.clock.now(), actor, previous, source)
        loaded_version = case.version
        outcome = engine.fire(case, trigger, context, data, reason, idempotency_key)
        for follow in then:
            more = engine.fire(
                case, follow, replace(context, deadline=None), data, None, idempotency_key
            )
            outcome.records.extend(more.records)
            outcome.messages.extend(more.messages)
        deadline = self._write_transition(uow, case, loaded_version, previous, outcome)
        return FireResult(case, deadline, outcome.records)

    def outbox_written(self) -> None:
        """Tell the relay that committed outbox rows wait (after a caller's own commit)."""
        self._outbox_written()

    def _write_transition(
        self,
        uow: UnitOfWork,
        case: Case,
        loaded_version: int,
        previous: Timer | None,
        outcome: engine.Outcome,
    ) -> Timer | None:
        """Write what ``engine.fire`` decided. For the workers' callers, events and timers,
        the unit of work is made once by their own record (the inbound event's dedupe row,
        the timer marked fired, both in this transaction: ``ports.UnitOfWork``): the idempotency
        key only labels the log rows, and the new deadline's ``id`` may stay None."""
        case_id = _id(case)
        # A miss may surface at a later statement or the commit (``CaseRepository.save``).
        uow.cases.save(case, loaded_version)
        uow.log.append(outcome.records)
        if previous is not None:
            uow.timers.disarm(case_id)
        deadline = engine.timer_for(case, self.policy, outcome.records[-1].at, previous)
        if deadline is not None:
            uow.timers.arm(deadline)
        uow.outbox.add(outcome.messages)
        return deadline

    def extend_deadline(
        self,
        case_id: int,
        actor: Actor,
        reason: str | None,
        until: datetime | None = None,
        hours: float | None = None,
        expected_version: int | None = None,
        source: str | None = None,
    ) -> FireResult:
        """An admin moves the case's current deadline later (holidays, disputes); audited.

        ``expected_version``, as for ``fire``: refuse with ``Conflict`` unless the case is still
        at that version."""
        if actor.role is not Role.ADMIN:
            raise Forbidden("only an admin extends deadlines")
        if not (reason or "").strip():
            raise InvalidInput("an admin needs a reason", "reason")
        try:
            request = Deadline(until=until, hours=hours)
        except ValidationError as error:
            raise describe_validation_error(error, "data") from None
        with self._uow() as uow:
            case = _get(uow, case_id)
            if expected_version is not None and expected_version != case.version:
                raise Conflict(
                    f"case {case_id} is at version {case.version}, not {expected_version}",
                    case.version,
                )
            deadline = uow.timers.pending(case_id)
            if deadline is None or deadline.id is None:
                raise StateConflict(
                    f"case {case_id} in state {case.state.value} has no deadline", "case"
                )
            new_due = engine.extension(
                deadline,
                request.until and ensure_utc(request.until),
                request.hours,
                self.max_deadline_extension,
            )
            now = self.clock.now()
            loaded_version = case.version
            case.version += 1
            case.updated_at = now
            record = TransitionRecord(
                case_id,
                case.version,
                "extend_deadline",
                case.state,
                case.state,
                str(actor),
                now,
                reason,
                {
                    "kind": deadline.kind,
                    "from": deadline.due_at.isoformat(),
                    "to": new_due.isoformat(),
                },
                source=source,
            )
            uow.cases.save(case, loaded_version)
            uow.log.append([record])
            uow.timers.reschedule(deadline.id, new_due, case.version)
            uow.commit()
            deadline.due_at, deadline.version = new_due, case.version
            return FireResult(case, deadline, [record])

    # -- timers ---------------------------------------------------------------------------------
    def due_timers(self, as_of: datetime | None = None, limit: int = 100) -> list[Timer]:
        with self._uow() as uow:
            return uow.timers.due(as_of or self.clock.now(), limit)

    def fire_timer(self, timer_id: int) -> TimerRun:
        """Fire one due timer as the system; a timer whose case moved on does nothing.

        A timer fired twice (two sweepers, a redelivered task) moves the case once: the
        firing finishes the timer and compare-and-sets the case at the timer's version in one
        transaction, so the second finds it finished or the case moved on. Its log rows carry
        ``timer-<id>`` as their key.
        """
        with self._uow() as uow:
            timer = uow.timers.get(timer_id)
            if timer is None:
                raise NotFound(f"no timer {timer_id}")
            if timer.status.value not in ("pending", "claimed"):
                return TimerRun(timer, False, f"already {timer.status.value}")
            run = self._fire_timer_in(uow, timer)
            uow.commit()
        if run.fired:
            self._outbox_written()
        return run

    def _fire_timer_in(self, uow: UnitOfWork, timer: Timer, case: Case | None = None) -> TimerRun:
        """Fire ``timer`` (as read before, maybe in another transaction) inside ``uow``.

        Nothing here trusts the copy further than the database confirms it: the case must
        still be at the timer's state and version, and the timer store only finishes a timer still
        live at that version (a rescheduled or already finished one is left alone). ``case``,
        when given, was read in ``uow`` before; the compare-and-set on its version catches a
        case moved since."""
        now = self.clock.now()
        if timer.due_at > now:
            return TimerRun(timer, False, "not due yet")
        if case is None:
            case = _get(uow, timer.case_id)
        if case.state is not timer.state or case.version != timer.version:
            if not uow.timers.cancel_stale(timer, now):
                return TimerRun(timer, False, "already finished or rescheduled")
            return TimerRun(timer, False, "stale: the case moved on")
        # Checked by the compare-and-set on the case below (see ``TimerStore.mark_fired``).
        uow.timers.mark_fired(timer, now)
        context = engine.Context(self.policy, now, SYSTEM, timer, channels.TIMER)
        loaded_version = case.version
        outcome = engine.fire(case, timer.trigger, context, idempotency_key=f"timer-{timer.id}")
        self._write_transition(uow, case, loaded_version, None, outcome)
        return TimerRun(timer, True, f"{timer.trigger}: {case.state.value}")

    def fire_timers(self, due: Sequence[Timer]) -> list[TimerRun]:
        """Fire timers read (or claimed) before, ``timer_batch`` to a transaction.

        Each timer runs in a savepoint: one that loses a race to a concurrent transition
        rolls back alone and is reported as a conflict (it stays claimed, and is claimed
        again later), a stale one is cancelled, and the others commit together. When the
        transaction itself fails (serialization failure, deadlock, lost connection) its
        timers are fired again one per transaction: a timer that did fire is found finished
        (and its case moved past the timer's version), so none fires twice.
        """
        runs: list[TimerRun] = []
        for start in range(0, len(due), self.timer_batch):
            runs.extend(self._fire_timer_batch(due[start : start + self.timer_batch]))
        return runs

    def _fire_timer_batch(self, batch: Sequence[Timer]) -> list[TimerRun]:
        if len(batch) == 1:
            return [self._fire_alone(batch[0])]
        runs = []
        try:
            with self._uow() as uow:
                # One read for the batch's cases (a timer's case is no other timer's: one live
                # timer per case).
                cases = uow.cases.get_many([timer.case_id for timer in batch])
                for timer in batch:
                    try:
                        with uow.savepoint():
                            runs.append(self._fire_timer_in(uow, timer, cases.get(timer.case_id)))
                    except Conflict:
                        runs.append(TimerRun(timer, False, CONFLICT_OUTCOME))
                uow.commit()
        except Exception:
            # The batch did not commit, or we cannot know it did. One timer per transaction is
            # the reference behaviour: it finds what did fire finished, and raises again what
            # is not a passing failure.
            return [self._fire_alone(timer) for timer in batch]
        if any(run.fired for run in runs):
            self._outbox_written()
        return runs

    def _fire_alone(self, timer: Timer) -> TimerRun:
        assert timer.id is not None
        try:
            return self.fire_timer(timer.id)
        except Conflict:
            return TimerRun(timer, False, CONFLICT_OUTCOME)

    def sweep_timers(
        self, claimer: str, batch: int = 500, reclaim_after: timedelta = timedelta(minutes=5)
    ) -> list[TimerRun]:
        """Claim a batch of due timers and fire them (``fire_timers``).

        Any number of sweepers may run at once: the claim hands each a disjoint batch, and a
        timer claimed by a sweeper that died is claimed again after ``reclaim_after``. A
        reclaimed timer that had in fact fired does nothing (``fire_timer``).
        """
        now = self.clock.now()
        with self._uow() as uow:
            claimed = uow.timers.claim_due(now, batch, claimer, now - reclaim_after)
            uow.commit()
        return self.fire_timers(claimed)

    def run_due_timers(self, as_of: datetime | None = None, limit: int = 1000) -> list[TimerRun]:
        """Fire every timer due at ``as_of`` (default now), ``timer_batch`` to a transaction."""
        return self.fire_timers(self.due_timers(as_of, limit))

    # -- reading --------------------------------------------------------------------------------
    def get(self, case_id: int, actor: Actor | None = None) -> CaseView:
        with self._uow() as uow:
            case = _get(uow, case_id)
            if actor is not None:
                engine.check_owner(case, actor)
            return CaseView(case, uow.timers.pending(case_id))

    def allowed_triggers(self, case_id: int, actor: Actor) -> list[str]:
        view = self.get(case_id, actor)
        return engine.allowed_triggers(view.case, actor)

    def history(self, case_id: int, actor: Actor | None = None) -> list[TransitionRecord]:
        with self._uow() as uow:
            case = _get(uow, case_id)
            if actor is not None:
                engine.check_owner(case, actor)
            return uow.log.for_case(case_id)

    def list(self, query: CaseQuery, actor: Actor | None = None) -> list[CaseView]:
        if actor is not None and actor.role is Role.BUYER:
            query = CaseQuery(**{**query.__dict__, "buyer_id": actor.id})
        elif actor is not None and actor.role is Role.MERCHANT:
            query = CaseQuery(**{**query.__dict__, "merchant_id": actor.id})
        with self._uow() as uow:
            return [CaseView(case, uow.timers.pending(_id(case))) for case in uow.cases.list(query)]

    def search(self, query: CaseQuery, actor: Actor | None = None) -> CasePage:
        """A page of the cases ``query`` asks for, among those ``actor`` may see (a merchant
        its own, a buyer its own, an admin all; naming someone else's is ``Forbidden``), each
        with its next deadline and who it waits for, and the cursor of the next page."""
        query = check_query(visible_to(query, actor))
        now = self.clock.now()
        with self._uow() as uow:
            # One more than asked tells whether there is a next page without a count.
            rows = uow.cases.search(replace(query, limit=query.limit + 1), now)
        page = rows[: query.limit]
        if len(rows) <= query.limit:
            return CasePage(page, None, now)
        last = page[-1]
        key = sort_key(query, last.case, last.deadline)
        return CasePage(page, Cursor(query.sort, query.descending, key, _id(last.case)), now)

    def merchant_figures(
        self,
        start: datetime,
        end: datetime,
        actor: Actor | None = None,
        merchant_id: str | None = None,
    ) -> builtins.list[MerchantFigures]:
        """The service figures of the cases submitted in [start, end), per merchant (only
        ``merchant_id``'s when given): any merchant's for an admin, its own for a merchant."""
        period, merchant_id = figures_scope(start, end, actor, merchant_id)
        with self._uow() as uow:
            return uow.cases.merchant_figures(period, merchant_id)


def _check_same_call(
    case_id: int, key: str, earlier: Sequence[TransitionRecord], trigger: str
) -> None:
    """A key replays the call it was first used for, and nothing else (issue 13: a ``cancel``
    with the key of an earlier ``approve`` silently answered with the approval)."""
    first = earlier[0].trigger
    if first != trigger:
        raise IdempotencyKeyReused(
            f"idempotency key {key} was used for {first} on case {case_id}, not {trigger}; "
            "use a new key for a new call"
        )


def _id(case: Case) -> int:
    assert case.id is not None
    return case.id


def _get(uow: UnitOfWork, case_id: int) -> Case:
    case = uow.cases.get(case_id)
    if case is None:
        raise NotFound(f"no case {case_id}")
    return case


def _cases_of(uow: UnitOfWork, order_id: str) -> list[Case]:
    return uow.cases.of_orders([order_id]).get(order_id, [])


def _eligibility_facts(app: Application, order: Order, line: OrderLine) -> rules.EligibilityFacts:
    """What the rules judge an application by: its type and reason, and the facts of the order
    line it names as the order of record has them (RULES.md C). The order of record does not
    record shipment or loss in transit yet, so ``shipped`` and ``lost_in_transit`` keep their
    defaults (shipped, not lost)."""
    return rules.EligibilityFacts(
        case_type=app.type,
        reason=app.reason,
        category=line.category,
        paid_at=order.payment.paid_at,
        delivered_at=order.delivered_at,
    )
