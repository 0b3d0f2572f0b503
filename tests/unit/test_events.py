"""Inbound events on the in-memory unit of work: mapping, dedupe, ordering, dead letters, replay.

The ordering expectations are docs/events.md's table, written out here by hand.
"""

from __future__ import annotations

import copy
import itertools
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import pytest

from config.sources import Sources
from workflow.clock import FakeClock
from workflow.errors import Conflict, InvalidInput, NotFound
from workflow.events.envelope import ORDER_EVENT_TYPES, EventType
from workflow.events.ingestion import EventService, IngestResult, IngestStatus
from workflow.events.mapping import EVENT_RULES
from workflow.memory import InMemoryDatabase, InMemoryUnitOfWorkFactory
from workflow.model import DeadLetterStatus
from workflow.service import CaseService
from workflow.states import CaseState, CaseType

from . import builders

RETURN_TN = builders.TRIGGER_DATA["ship_back"]["tracking_no"]  # SF1001
OUTBOUND_TN = builders.TRIGGER_DATA["ship_replacement"]["tracking_no"]  # SF2001
REPAIRED_TN = builders.TRIGGER_DATA["ship_repaired"]["tracking_no"]  # SF3001

_ids = itertools.count(1)

#: Who resolves dead letters in these tests, and why.
RESOLVER = ("admin:ops-1", "checked by hand")


def event(type_: str, case_id: int | None = None, **fields: Any) -> dict[str, Any]:
    """An envelope as a producer sends it; a fresh event id unless given."""
    source = {
        "parcel": "sf-express",
        "refund": "wechat-pay",
        "merchant": "merchant-portal",
        "buyer": "buyer-app",
    }[type_.split(".")[0]]
    envelope: dict[str, Any] = {
        "event_id": f"ev-{next(_ids)}",
        "source": source,
        "type": type_,
        "occurred_at": "2026-11-20T10:00:00+08:00",
        "data": {},
    }
    if case_id is not None:
        envelope["case_id"] = case_id
    envelope.update(fields)
    return envelope


@pytest.fixture
def events(
    service: CaseService, uow_factory: InMemoryUnitOfWorkFactory, clock: FakeClock
) -> EventService:
    return EventService(service, uow_factory, clock)


@dataclass(frozen=True)
class Snapshot:
    """What an event may write: the cases, their log, timers, outbox, recorded events."""

    cases: Any
    log: Any
    timers: Any
    outbox: Any
    inbound: Any
    letters: Any

    @classmethod
    def of(cls, db: InMemoryDatabase) -> Snapshot:
        return cls(
            *(
                copy.deepcopy(part)
                for part in (
                    db.cases,
                    db.log,
                    db.timers,
                    db.outbox,
                    db.inbound_events,
                    db.dead_letters,
                )
            )
        )


def settles(service: CaseService, case_id: int) -> dict[str, Any]:
    """What a refund result names: the attempt it settles and its amount (the case's now)."""
    case = service.get(case_id).case
    return {"idempotency_key": case.refund_key, "amount": case.refund_amount}


def state_of(service: CaseService, case_id: int) -> CaseState:
    return service.get(case_id).case.state


# -- every event type maps and applies ----------------------------------------------------------

MERCHANT = {"merchant_id": "m1"}
BUYER = {"buyer_id": "b1"}

#: (event type, case type, state label, data, envelope extras, triggers fired, state after).
APPLIES: list[tuple[str, CaseType, str, dict[str, Any], dict[str, Any], list[str], CaseState]] = [
    (
        "parcel.picked_up",
        CaseType.RETURN_REFUND,
        "pickup",
        {},
        {"tracking_no": "SF9"},
        ["record_pickup"],
        CaseState.SHIPPED_BACK,
    ),
    (
        "parcel.picked_up",
        CaseType.EXCHANGE,
        "pickup",
        {"tracking_no": "SF9"},
        {},
        ["record_pickup"],
        CaseState.SHIPPED_BACK,
    ),
    (
        "parcel.delivered",
        CaseType.RETURN_REFUND,
        "shipped_back",
        {},
        {"tracking_no": RETURN_TN},
        ["record_return_delivery"],
        CaseState.RETURN_DELIVERED,
    ),
    (
        "parcel.delivered",
        CaseType.EXCHANGE,
        "shipped_to_buyer",
        {},
        {"tracking_no": OUTBOUND_TN},
        ["record_buyer_delivery"],
        CaseState.DELIVERED_TO_BUYER,
    ),
    (
        "parcel.delivered",
        CaseType.REPAIR,
        "shipped_to_buyer",
        {"recipient": "buyer", "tracking_no": "SF3001"},
        {},
        ["record_buyer_delivery"],
        CaseState.DELIVERED_TO_BUYER,
    ),
    (
        "parcel.lost",
        CaseType.RETURN_REFUND,
        "shipped_back",
        {"note": "lost at the hub"},
        {"tracking_no": RETURN_TN},
        ["report_parcel_lost"],
        CaseState.DISPUTED,
    ),
    (
        "parcel.lost",
        CaseType.EXCHANGE,
        "shipped_to_buyer",
        {},
        {"tracking_no": OUTBOUND_TN},
        ["report_parcel_lost"],
        CaseState.DISPUTED,
    ),
    (
        "parcel.damaged",
        CaseType.REPAIR,
        "shipped_back",
        {"note": "box crushed"},
        {"tracking_no": RETURN_TN},
        ["report_parcel_damaged"],
        CaseState.DISPUTED,
    ),
    (
        "refund.succeeded",
        CaseType.RETURN_REFUND,
        "refunding",
        {"reference": "wx-1"},
        {},
        ["confirm_refund"],
        CaseState.REFUNDED,
    ),
    (
        "refund.failed",
        CaseType.REFUND_ONLY,
        "refunding",
        {"error": "channel down"},
        {},
        ["fail_refund"],
        CaseState.REFUND_FAILED,
    ),
    (
        "merchant.approved",
        CaseType.EXCHANGE,
        "submitted",
        MERCHANT,
        {},
        ["approve"],
        CaseState.APPROVED,
    ),
    (
        "merchant.rejected",
        CaseType.RETURN_REFUND,
        "submitted",
        {**MERCHANT, "reason": "worn"},
        {},
        ["reject"],
        CaseState.REJECTED,
    ),
    (
        "merchant.receipt_confirmed",
        CaseType.RETURN_REFUND,
        "return_delivered",
        MERCHANT,
        {},
        ["confirm_receipt"],
        CaseState.RECEIVED,
    ),
    (
        "merchant.inspected",
        CaseType.EXCHANGE,
        "received",
        {**MERCHANT, "gifts_missing": ["G"]},
        {},
        ["inspect"],
        CaseState.INSPECTED,
    ),
    (
        "merchant.inspection_failed",
        CaseType.RETURN_REFUND,
        "received",
        {**MERCHANT, "reason": "not the item sold"},
        {},
        ["fail_inspection"],
        CaseState.REJECTED,
    ),
    (
        "merchant.replacement_shipped",
        CaseType.EXCHANGE,
        "inspected",
        {**MERCHANT, "tracking_no": "SF77"},
        {},
        ["ship_replacement"],
        CaseState.SHIPPED_TO_BUYER,
    ),
    (
        "merchant.repaired_shipped",
        CaseType.REPAIR,
        "inspected",
        {**MERCHANT, "tracking_no": "SF78"},
        {},
        ["ship_repaired"],
        CaseState.SHIPPED_TO_BUYER,
    ),
    (
        "merchant.converted_to_refund",
        CaseType.EXCHANGE,
        "inspected",
        MERCHANT,
        {},
        ["convert_to_refund"],
        CaseState.REFUNDING,
    ),
    (
        "buyer.cancelled",
        CaseType.RETURN_REFUND,
        "approved",
        BUYER,
        {},
        ["cancel"],
        CaseState.CANCELLED,
    ),
    (
        "buyer.revised",
        CaseType.RETURN_REFUND,
        "rejected",
        {**BUYER, "description": "photos added"},
        {},
        ["revise"],
        CaseState.SUBMITTED,
    ),
    (
        "buyer.return_shipped",
        CaseType.RETURN_REFUND,
        "approved",
        {**BUYER, "tracking_no": "SF5"},
        {},
        ["ship_back"],
        CaseState.SHIPPED_BACK,
    ),
    (
        "buyer.delivery_confirmed",
        CaseType.EXCHANGE,
        "delivered_to_buyer",
        BUYER,
        {},
        ["confirm_delivery"],
        CaseState.EXCHANGED,
    ),
    (
        "buyer.bank_account_provided",
        CaseType.EXCHANGE,
        "awaiting_bank_account",
        {**BUYER, **builders.TRIGGER_DATA["provide_bank_account"]},
        {},
        ["provide_bank_account"],
        CaseState.REFUNDING,
    ),
    (
        "buyer.escalated",
        CaseType.RETURN_REFUND,
        "rejected",
        BUYER,
        {},
        ["escalate"],
        CaseState.DISPUTED,
    ),
]


def test_the_table_covers_every_event_type() -> None:
    # (the order.* events write orders of record, not cases: tests/unit/test_order_events.py)
    case_types = {t.value for t in EventType if t not in ORDER_EVENT_TYPES}
    assert {row[0] for row in APPLIES} == case_types == set(EVENT_RULES)


@pytest.mark.parametrize(
    ("type_", "case_type", "label", "data", "extra", "triggers", "after"),
    APPLIES,
    ids=[f"{row[0]}-{row[1].value}-{row[2]}" for row in APPLIES],
)
def test_each_event_type_applies_its_trigger(
    events: EventService,
    service: CaseService,
    new_case: Callable[..., int],
    type_: str,
    case_type: CaseType,
    label: str,
    data: dict[str, Any],
    extra: dict[str, Any],
    triggers: list[str],
    after: CaseState,
) -> None:
    # given a case in the state the event is about
    case_id = new_case(case_type, label)
    before = service.get(case_id).case.version

    # when the event comes in
    envelope = event(type_, case_id, data=copy.deepcopy(data), **extra)
    if type_.startswith("refund."):
        envelope["data"].update(settles(service, case_id))
    result = events.ingest(envelope)

    # then its trigger fired, as the producer, with the event id as idempotency key
    assert result.status is IngestStatus.APPLIED, result
    assert (result.case_id, result.state) == (case_id, after)
    history = service.history(case_id)
    fired = [r for r in history if r.seq > before]
    assert [r.trigger for r in fired][: len(triggers)] == triggers
    key = f"event:{envelope['source']}:{envelope['event_id']}"
    assert {r.idempotency_key for r in fired} == {key}
    actor = fired[0].actor
    if type_.startswith("merchant."):
        assert actor == "merchant:m1"
    elif type_.startswith("buyer."):
        assert actor == "buyer:b1"
    else:
        role = "carrier" if type_.startswith("parcel.") else "payment"
        assert actor == f"{role}:{envelope['source']}"


def test_an_event_found_by_order_or_parcel_applies(
    events: EventService, service: CaseService, new_case: Callable[..., int]
) -> None:
    # given a case whose pickup is booked, found by its order
    case_id = new_case(CaseType.RETURN_REFUND, "pickup")
    pickup = event("parcel.picked_up", order_id="o1", tracking_no="SF42")
    assert events.ingest(pickup).status is IngestStatus.APPLIED

    # when the delivery names only the parcel
    result = events.ingest(event("parcel.delivered", tracking_no="SF42"))

    # then it found the case by the tracking number the pickup recorded
    assert (result.status, result.case_id) == (IngestStatus.APPLIED, case_id)
    assert state_of(service, case_id) is CaseState.RETURN_DELIVERED


# -- dedupe ------------------------------------------------------------------------------------


def test_a_redelivered_event_is_a_duplicate_and_writes_nothing(
    events: EventService, new_case: Callable[..., int], db: InMemoryDatabase
) -> None:
    # given an approval that applied
    case_id = new_case(CaseType.RETURN_REFUND)
    approval = event("merchant.approved", case_id, data=MERCHANT)
    assert events.ingest(approval).status is IngestStatus.APPLIED
    before = Snapshot.of(db)

    # when it is delivered again
    again = events.ingest(copy.deepcopy(approval))

    # then it is a duplicate, and nothing was written twice
    assert again.status is IngestStatus.DUPLICATE
    assert again.case_id == case_id
    assert Snapshot.of(db) == before
    assert list(db.inbound_events) == [("merchant-portal", approval["event_id"])]


def test_a_duplicate_stays_a_duplicate_after_the_case_moved_on(
    events: EventService, service: CaseService, new_case: Callable[..., int], db: InMemoryDatabase
) -> None:
    # given a refund confirmed, and the case refunded since
    case_id = new_case(CaseType.RETURN_REFUND, "refunding")
    paid = event(
        "refund.succeeded", case_id, data={"reference": "wx-9", **settles(service, case_id)}
    )
    assert events.ingest(paid).status is IngestStatus.APPLIED
    before = Snapshot.of(db)

    # when the gateway redelivers it with a different body
    result = events.ingest({**paid, "data": {**paid["data"], "reference": "wx-other"}})

    # then the id decides: a duplicate, not a contradiction to dead-letter
    assert result.status is IngestStatus.DUPLICATE
    assert Snapshot.of(db) == before


def test_the_same_event_id_from_another_source_is_another_event(
    service: CaseService, uow_factory: InMemoryUnitOfWorkFactory, new_case: Callable[..., int]
) -> None:
    two_carriers = Sources(sources={"sf-express": "carrier", "yto": "carrier"})
    events = EventService(service, uow_factory, service.clock, sources=two_carriers)
    case_id = new_case(CaseType.RETURN_REFUND, "pickup")
    first = events.ingest(event("parcel.picked_up", case_id, event_id="42", tracking_no="Y1"))
    second = events.ingest(
        event("parcel.delivered", case_id, event_id="42", source="yto", tracking_no="Y1")
    )
    assert (first.status, second.status) == (IngestStatus.APPLIED, IngestStatus.APPLIED)


def test_an_ignored_event_is_recorded_and_its_redelivery_is_a_duplicate(
    events: EventService, new_case: Callable[..., int], db: InMemoryDatabase
) -> None:
    # given a case the buyer already shipped
    case_id = new_case(CaseType.RETURN_REFUND, "shipped_back")
    pickup = event("parcel.picked_up", case_id, tracking_no=RETURN_TN)

    # when the carrier's pickup arrives, twice
    first = events.ingest(pickup)
    second = events.ingest(pickup)

    # then the first is acknowledged without a transition and remembered
    assert first.status is IngestStatus.IGNORED
    assert first.reason is not None and "stale" in first.reason
    assert db.inbound_events[("sf-express", pickup["event_id"])][0] == case_id
    assert second.status is IngestStatus.DUPLICATE


# -- out of order (docs/events.md) ----------------------------------------------------------------


@pytest.mark.parametrize("label", ["pickup"])
def test_a_delivery_before_the_pickup_applies_both_in_one_transaction(
    events: EventService, service: CaseService, new_case: Callable[..., int], label: str
) -> None:
    # given a return not picked up yet
    case_id = new_case(CaseType.RETURN_REFUND, label)
    before = service.get(case_id).case.version

    # when the carrier reports the delivery first
    delivered = event("parcel.delivered", case_id, tracking_no="SF8")
    result = events.ingest(delivered)

    # then the pickup it implies and the delivery both apply, under the event's one key
    assert result.status is IngestStatus.APPLIED
    assert (result.implied, result.trigger) == (("record_pickup",), "record_return_delivery")
    fired = [r for r in service.history(case_id) if r.seq > before]
    assert [(r.trigger, r.to_state) for r in fired] == [
        ("record_pickup", CaseState.SHIPPED_BACK),
        ("record_return_delivery", CaseState.RETURN_DELIVERED),
    ]
    assert len({r.idempotency_key for r in fired}) == 1
    view = service.get(case_id)
    assert view.case.details["return_tracking_no"] == "SF8"
    assert view.deadline is not None and view.deadline.kind == "merchant_receipt"

    # and the pickup arriving late is stale
    late = events.ingest(event("parcel.picked_up", case_id, tracking_no="SF8"))
    assert late.status is IngestStatus.IGNORED


@pytest.mark.parametrize(
    ("type_", "label", "extra"),
    [
        ("parcel.picked_up", "shipped_back", {"tracking_no": RETURN_TN}),
        ("parcel.picked_up", "return_delivered", {"tracking_no": RETURN_TN}),
        ("parcel.picked_up", "received", {"tracking_no": RETURN_TN}),
        ("parcel.picked_up", "refunded", {"tracking_no": RETURN_TN}),
        ("parcel.delivered", "return_delivered", {"tracking_no": RETURN_TN}),
        ("parcel.delivered", "received", {"tracking_no": RETURN_TN}),
        ("parcel.delivered", "refunding", {"tracking_no": RETURN_TN}),
        ("parcel.delivered", "refunded", {"tracking_no": RETURN_TN}),
    ],
)
def test_stale_carrier_news_on_the_return_leg_is_ignored(
    events: EventService,
    new_case: Callable[..., int],
    db: InMemoryDatabase,
    type_: str,
    label: str,
    extra: dict[str, Any],
) -> None:
    # given a case past the point the carrier reports
    case_id = new_case(CaseType.RETURN_REFUND, label)
    before = Snapshot.of(db)

    # when the carrier's late news arrives
    result = events.ingest(event(type_, case_id, **extra))

    # then it is acknowledged and recorded, and the case is untouched
    assert result.status is IngestStatus.IGNORED, result
    after = Snapshot.of(db)
    assert (after.cases, after.log, after.outbox, after.letters) == (
        before.cases,
        before.log,
        before.outbox,
        before.letters,
    )
    assert len(after.inbound) == len(before.inbound) + 1


def test_a_stale_return_delivery_is_not_taken_for_the_outbound_one(
    events: EventService, service: CaseService, new_case: Callable[..., int]
) -> None:
    # given an exchange whose replacement is on its way
    case_id = new_case(CaseType.EXCHANGE, "shipped_to_buyer")

    # when the carrier's late news of the return parcel comes, then the replacement's delivery
    stale = events.ingest(event("parcel.delivered", case_id, tracking_no=RETURN_TN))
    fresh = events.ingest(event("parcel.delivered", case_id, tracking_no=OUTBOUND_TN))

    # then the tracking number told them apart
    assert stale.status is IngestStatus.IGNORED
    assert (fresh.status, fresh.trigger) == (IngestStatus.APPLIED, "record_buyer_delivery")
    assert state_of(service, case_id) is CaseState.DELIVERED_TO_BUYER


def test_an_outbound_delivery_before_the_shipment_waits_as_a_dead_letter_and_replays(
    events: EventService, service: CaseService, new_case: Callable[..., int]
) -> None:
    # given an exchange whose merchant has not reported shipping the replacement yet
    case_id = new_case(CaseType.EXCHANGE, "inspected")
    delivered = event("parcel.delivered", case_id, tracking_no="SF55", data={"recipient": "buyer"})

    # when the carrier's delivery to the buyer comes first
    result = events.ingest(delivered)

    # then it cannot apply yet: a dead letter naming the refusal (a parcel the case does not
    # know yet)
    assert result.status is IngestStatus.DEAD_LETTERED
    assert result.code == "invalid_input" and "SF55" in (result.reason or "")
    assert state_of(service, case_id) is CaseState.INSPECTED

    # and once the shipment is in, replaying it applies and closes the letter
    shipped = event(
        "merchant.replacement_shipped", case_id, data={**MERCHANT, "tracking_no": "SF55"}
    )
    assert events.ingest(shipped).status is IngestStatus.APPLIED
    assert result.letter_id is not None
    replayed = events.replay(result.letter_id, *RESOLVER)
    assert (replayed.status, replayed.letter_id) == (IngestStatus.APPLIED, result.letter_id)
    assert state_of(service, case_id) is CaseState.DELIVERED_TO_BUYER
    assert events.dead_letter(result.letter_id).status is DeadLetterStatus.REPLAYED
    assert events.dead_letters() == []


def test_a_parcel_that_is_not_the_cases_is_refused(
    events: EventService, service: CaseService, new_case: Callable[..., int], db: InMemoryDatabase
) -> None:
    case_id = new_case(CaseType.RETURN_REFUND, "shipped_back")
    result = events.ingest(event("parcel.delivered", case_id, tracking_no="SF-OTHER"))
    assert (result.status, result.code) == (IngestStatus.DEAD_LETTERED, "invalid_input")
    assert result.reason is not None and RETURN_TN in result.reason
    assert state_of(service, case_id) is CaseState.SHIPPED_BACK
    assert db.inbound_events == {}


def test_carrier_news_the_state_cannot_take_is_dead_lettered(
    events: EventService, new_case: Callable[..., int]
) -> None:
    # a parcel lost after it was delivered, and a pickup on a cancelled case, need a person
    delivered = new_case(CaseType.RETURN_REFUND, "return_delivered")
    cancelled = new_case(CaseType.EXCHANGE, "cancelled", order_id="o2")
    lost = events.ingest(event("parcel.lost", delivered, tracking_no=RETURN_TN))
    pickup = events.ingest(event("parcel.picked_up", cancelled, tracking_no=RETURN_TN))
    assert (lost.status, lost.code) == (IngestStatus.DEAD_LETTERED, "not_allowed")
    # (a case cancelled before anything shipped knows no parcel at all)
    assert (pickup.status, pickup.code) == (IngestStatus.DEAD_LETTERED, "invalid_input")


def test_a_refund_only_case_takes_no_parcel_events(
    events: EventService, new_case: Callable[..., int]
) -> None:
    case_id = new_case(CaseType.REFUND_ONLY, "refunding")
    result = events.ingest(event("parcel.delivered", case_id, tracking_no=RETURN_TN))
    # it has no parcel for one to name
    assert (result.status, result.code) == (IngestStatus.DEAD_LETTERED, "invalid_input")


def test_the_merchant_confirming_first_makes_the_carrier_delivery_stale(
    events: EventService, service: CaseService, new_case: Callable[..., int]
) -> None:
    case_id = new_case(CaseType.RETURN_REFUND, "shipped_back")
    confirmed = events.ingest(event("merchant.receipt_confirmed", case_id, data=MERCHANT))
    delivered = events.ingest(event("parcel.delivered", case_id, tracking_no=RETURN_TN))
    assert (confirmed.status, delivered.status) == (IngestStatus.APPLIED, IngestStatus.IGNORED)
    assert state_of(service, case_id) is CaseState.RECEIVED


@pytest.mark.parametrize("case_type", [CaseType.RETURN_REFUND, CaseType.EXCHANGE])
def test_a_receipt_confirmed_after_the_receipt_timer_moved_the_case_on_is_ignored(
    events: EventService,
    service: CaseService,
    clock: FakeClock,
    new_case: Callable[..., int],
    case_type: CaseType,
) -> None:
    # given: the receipt timer fired (the case went on to the refund / the replacement)
    case_id = new_case(case_type, "return_delivered")
    clock.advance(timedelta(days=10))
    service.run_due_timers()
    moved_on = state_of(service, case_id)
    assert moved_on in (CaseState.REFUNDING, CaseState.INSPECTED)
    # when: the merchant's late confirmation arrives
    late = events.ingest(event("merchant.receipt_confirmed", case_id, data=MERCHANT))
    # then: acknowledged as stale, nothing moved, no dead letter
    assert late.status is IngestStatus.IGNORED
    assert state_of(service, case_id) is moved_on


def test_the_buyers_shipment_after_the_carriers_pickup_is_ignored_for_the_same_parcel(
    events: EventService, new_case: Callable[..., int]
) -> None:
    case_id = new_case(CaseType.RETURN_REFUND, "pickup")
    assert events.ingest(event("parcel.picked_up", case_id, tracking_no="SF7")).status is (
        IngestStatus.APPLIED
    )
    same = events.ingest(
        event("buyer.return_shipped", case_id, data={**BUYER, "tracking_no": "SF7"})
    )
    other = events.ingest(
        event("buyer.return_shipped", case_id, data={**BUYER, "tracking_no": "SF8"})
    )
    assert same.status is IngestStatus.IGNORED
    assert (other.status, other.code) == (IngestStatus.DEAD_LETTERED, "not_allowed")


def test_a_merchant_approval_after_the_review_timer_approved_is_ignored(
    events: EventService,
    service: CaseService,
    new_case: Callable[..., int],
    clock: FakeClock,
) -> None:
    # given a case the review timer approved
    case_id = new_case(CaseType.RETURN_REFUND)
    clock.advance(timedelta(hours=49))
    service.run_due_timers()
    assert state_of(service, case_id) is CaseState.APPROVED

    # when the merchant's approval arrives late, then it is already true
    result = events.ingest(event("merchant.approved", case_id, data=MERCHANT))
    assert result.status is IngestStatus.IGNORED


# -- payment results ----------------------------------------------------------------------------


def test_a_confirmed_refund_confirmed_again_is_ignored_unless_it_contradicts(
    events: EventService, service: CaseService, new_case: Callable[..., int]
) -> None:
    case_id = new_case(CaseType.RETURN_REFUND, "refunding")
    named = settles(service, case_id)
    succeeded = event("refund.succeeded", case_id, data={"reference": "wx-1", **named})
    assert events.ingest(succeeded).status is IngestStatus.APPLIED
    same = events.ingest(event("refund.succeeded", case_id, data={"reference": "wx-1", **named}))
    other = events.ingest(event("refund.succeeded", case_id, data={"reference": "wx-2", **named}))
    failed = events.ingest(event("refund.failed", case_id, data={"error": "late", **named}))
    assert same.status is IngestStatus.IGNORED
    assert (other.status, other.code) == (IngestStatus.DEAD_LETTERED, "not_allowed")
    assert (failed.status, failed.code) == (IngestStatus.DEAD_LETTERED, "not_allowed")


def test_a_failure_reported_twice_is_ignored(
    events: EventService, service: CaseService, new_case: Callable[..., int]
) -> None:
    case_id = new_case(CaseType.RETURN_REFUND, "refund_failed")
    data = {"error": "again", **settles(service, case_id)}
    result = events.ingest(event("refund.failed", case_id, data=data))
    assert result.status is IngestStatus.IGNORED


def test_a_result_of_an_earlier_refund_attempt_never_applies_to_the_current_one(
    events: EventService,
    service: CaseService,
    new_case: Callable[..., int],
    clock: FakeClock,
    db: InMemoryDatabase,
) -> None:
    # given a refund whose first attempt failed and whose retry is under way
    case_id = new_case(CaseType.RETURN_REFUND, "refunding")
    first_key = service.get(case_id).case.refund_key
    failed = event("refund.failed", case_id, data={**settles(service, case_id), "error": "x"})
    assert events.ingest(failed).status is IngestStatus.APPLIED
    clock.advance(timedelta(hours=1))
    service.run_due_timers()
    case = service.get(case_id).case
    assert case.state is CaseState.REFUNDING and case.refund_key != first_key
    before = Snapshot.of(db)

    # when a late success of the first attempt arrives
    late = events.ingest(
        event(
            "refund.succeeded",
            case_id,
            data={"idempotency_key": first_key, "amount": case.refund_amount, "reference": "r"},
        )
    )

    # then it is dead-lettered as stale, and the retry is untouched
    assert (late.status, late.code) == (IngestStatus.DEAD_LETTERED, "stale_event")
    assert late.reason is not None and first_key is not None and first_key in late.reason
    assert Snapshot.of(db).cases == before.cases

    # and the current attempt's result applies
    current = event(
        "refund.succeeded", case_id, data={**settles(service, case_id), "reference": "r2"}
    )
    assert events.ingest(current).status is IngestStatus.APPLIED
    assert state_of(service, case_id) is CaseState.REFUNDED


def test_a_refund_of_another_amount_is_refused(
    events: EventService, service: CaseService, new_case: Callable[..., int]
) -> None:
    case_id = new_case(CaseType.RETURN_REFUND, "refunding")
    named = settles(service, case_id)
    named["amount"] += 1
    result = events.ingest(event("refund.succeeded", case_id, data=named))
    assert (result.status, result.code) == (IngestStatus.DEAD_LETTERED, "invalid_input")
    assert state_of(service, case_id) is CaseState.REFUNDING


def test_an_unknown_refund_outcome_keeps_the_attempt_open(
    events: EventService, service: CaseService, new_case: Callable[..., int]
) -> None:
    case_id = new_case(CaseType.RETURN_REFUND, "refunding")
    data = {"definite": False, **settles(service, case_id)}
    result = events.ingest(event("refund.failed", case_id, data=data))
    assert result.status is IngestStatus.APPLIED
    assert service.get(case_id).case.details["refund_unsettled"] is True


# -- dead letters ------------------------------------------------------------------------------

MALFORMED: list[tuple[Any, str]] = [
    ({**event("merchant.approved", 1), "event_id": ""}, "event_id"),
    ({k: v for k, v in event("merchant.approved", 1).items() if k != "event_id"}, "event_id"),
    ({**event("merchant.approved", 1), "occurred_at": "2026-11-20T10:00:00"}, "occurred_at"),
    ({**event("merchant.approved", 1), "type": "merchant.waved"}, "type"),
    ({**event("merchant.approved", 1), "priority": 1}, "priority"),
    ({**event("merchant.approved", 1), "case_id": "1"}, "case_id"),
    (event("merchant.approved"), "name the case"),
    ('{"event_id": "e", "source":', "not valid JSON"),
    ("[1, 2]", "JSON object"),
    (42, "JSON object"),
]


@pytest.mark.parametrize(("raw", "named"), MALFORMED)
def test_a_malformed_event_is_dead_lettered_and_nothing_else_is_written(
    events: EventService, new_case: Callable[..., int], db: InMemoryDatabase, raw: Any, named: str
) -> None:
    # given a case the event might have been about
    new_case(CaseType.RETURN_REFUND)
    before = Snapshot.of(db)

    # when a malformed event comes in
    result = events.ingest(copy.deepcopy(raw))

    # then it is kept as a dead letter naming what is wrong; nothing else changed
    assert (result.status, result.code) == (IngestStatus.DEAD_LETTERED, "invalid_input")
    assert result.reason is not None and named in result.reason
    after = Snapshot.of(db)
    assert (after.cases, after.log, after.timers, after.outbox, after.inbound) == (
        before.cases,
        before.log,
        before.timers,
        before.outbox,
        before.inbound,
    )
    [letter] = events.dead_letters()
    assert (letter.id, letter.code, letter.reason) == (
        result.letter_id,
        "invalid_input",
        result.reason,
    )
    assert letter.envelope == (raw if isinstance(raw, dict) else letter.envelope)


@pytest.mark.parametrize(
    ("make", "code", "named"),
    [
        (lambda case_id: event("merchant.approved", 999, data=MERCHANT), "not_found", "999"),
        (
            lambda case_id: event("merchant.approved", order_id="o-none", data=MERCHANT),
            "not_found",
            "o-none",
        ),
        (
            lambda case_id: event("parcel.picked_up", tracking_no="SF-UNKNOWN"),
            "not_found",
            "SF-UNKNOWN",
        ),
        (
            lambda case_id: event("merchant.receipt_confirmed", case_id, data=MERCHANT),
            "not_allowed",
            "submitted",
        ),
        (
            lambda case_id: event("merchant.approved", case_id, data={"merchant_id": "m2"}),
            "forbidden",
            "another merchant",
        ),
        (
            lambda case_id: event("buyer.cancelled", case_id, data={"buyer_id": "b2"}),
            "forbidden",
            "",
        ),
        (lambda case_id: event("merchant.approved", case_id), "invalid_input", "merchant_id"),
        (
            lambda case_id: event("merchant.rejected", case_id, data=MERCHANT),
            "invalid_input",
            "reason",
        ),
        (
            lambda case_id: event("merchant.approved", case_id, data={**MERCHANT, "x": 1}),
            "invalid_input",
            "x",
        ),
        (
            lambda case_id: event("merchant.approved", case_id, order_id="o9", data=MERCHANT),
            "invalid_input",
            "o9",
        ),
        (
            lambda case_id: event("parcel.picked_up", case_id, data={"colour": "red"}),
            "invalid_input",
            "colour",
        ),
    ],
    ids=[
        "unknown-case",
        "unknown-order",
        "unknown-parcel",
        "illegal-state",
        "wrong-merchant",
        "wrong-buyer",
        "no-merchant",
        "reject-without-reason",
        "bad-trigger-data",
        "order-mismatch",
        "bad-carrier-data",
    ],
)
def test_an_event_that_cannot_apply_is_dead_lettered_with_its_code_and_reason(
    events: EventService,
    new_case: Callable[..., int],
    db: InMemoryDatabase,
    make: Callable[[int], dict[str, Any]],
    code: str,
    named: str,
) -> None:
    # given a submitted case
    case_id = new_case(CaseType.RETURN_REFUND)
    before = Snapshot.of(db)
    envelope = make(case_id)

    # when an event that cannot apply to it comes in
    result = events.ingest(envelope)

    # then a dead letter keeps it, with the error's code and message; nothing else is written
    assert (result.status, result.code) == (IngestStatus.DEAD_LETTERED, code), result
    assert result.reason is not None and named in result.reason
    after = Snapshot.of(db)
    assert (after.cases, after.log, after.outbox, after.inbound) == (
        before.cases,
        before.log,
        before.outbox,
        before.inbound,
    )
    [letter] = events.dead_letters()
    assert (letter.source, letter.event_id, letter.envelope) == (
        envelope["source"],
        envelope["event_id"],
        envelope,
    )
    assert (letter.code, letter.reason, letter.attempts) == (code, result.reason, 1)


def test_the_same_bad_event_delivered_again_counts_attempts_on_one_letter(
    events: EventService,
) -> None:
    bad = event("merchant.approved", 404, data=MERCHANT)
    first, second = events.ingest(bad), events.ingest(bad)
    assert first.letter_id == second.letter_id
    [letter] = events.dead_letters()
    assert letter.attempts == 2


def test_an_order_with_several_open_cases_needs_the_case_named(
    events: EventService, service: CaseService, new_case: Callable[..., int]
) -> None:
    both = [builders.item("A", 100), builders.item("B", 100)]
    app = builders.application(CaseType.RETURN_REFUND, items=both, payment=builders.payment(200))
    builders.import_orders(service, builders.order_for(app))
    new_case(CaseType.RETURN_REFUND, items=[builders.item("A", 100)], payment=builders.payment(200))
    new_case(CaseType.RETURN_REFUND, items=[builders.item("B", 100)], payment=builders.payment(200))
    result = events.ingest(event("merchant.approved", order_id="o1", data=MERCHANT))
    assert (result.status, result.code) == (IngestStatus.DEAD_LETTERED, "invalid_input")
    assert result.reason is not None and "1, 2" in result.reason.replace("2, 1", "1, 2")


# -- replay and discard ---------------------------------------------------------------------------


def test_replay_applies_once_the_case_is_ready_and_marks_the_letter_replayed(
    events: EventService, service: CaseService, new_case: Callable[..., int], clock: FakeClock
) -> None:
    # given a receipt confirmation that came before the approval
    case_id = new_case(CaseType.RETURN_REFUND, "shipped_back")
    early = events.ingest(event("merchant.inspected", case_id, data=MERCHANT))
    assert early.status is IngestStatus.DEAD_LETTERED and early.letter_id is not None

    # when it is replayed too soon, it stays open with one more attempt
    clock.advance(timedelta(minutes=5))
    still = events.replay(early.letter_id, *RESOLVER)
    assert (still.status, still.letter_id) == (IngestStatus.DEAD_LETTERED, early.letter_id)
    letter = events.dead_letter(early.letter_id)
    assert (letter.status, letter.attempts) == (DeadLetterStatus.OPEN, 2)

    # and once the merchant confirmed receipt, the replay applies and closes the letter
    service.fire(case_id, "confirm_receipt", builders.MERCHANT)
    done = events.replay(early.letter_id, *RESOLVER)
    assert (done.status, done.trigger) == (IngestStatus.APPLIED, "inspect")
    letter = events.dead_letter(early.letter_id)
    assert (letter.status, letter.resolved_at) == (DeadLetterStatus.REPLAYED, clock.now())
    assert events.dead_letters() == []
    assert [letter.id for letter in events.dead_letters(DeadLetterStatus.REPLAYED)] == [
        early.letter_id
    ]


def test_a_letter_whose_event_got_through_meanwhile_replays_as_a_duplicate(
    events: EventService, service: CaseService, new_case: Callable[..., int]
) -> None:
    # given an approval dead-lettered (unknown case), then redelivered once the case exists
    approval = event("merchant.approved", 1, data=MERCHANT)
    letter_id = events.ingest(approval).letter_id
    assert letter_id is not None
    new_case(CaseType.RETURN_REFUND)
    assert events.ingest(approval).status is IngestStatus.APPLIED

    # when the open letter is replayed, then it is a duplicate and the letter is closed
    assert events.replay(letter_id, *RESOLVER).status is IngestStatus.DUPLICATE
    assert events.dead_letter(letter_id).status is DeadLetterStatus.REPLAYED


def test_only_open_letters_replay(events: EventService) -> None:
    letter_id = events.ingest(event("merchant.approved", 7, data=MERCHANT)).letter_id
    assert letter_id is not None
    discarded = events.discard(letter_id, *RESOLVER)
    assert discarded.status is DeadLetterStatus.DISCARDED
    with pytest.raises(InvalidInput, match="discarded"):
        events.replay(letter_id, *RESOLVER)
    with pytest.raises(InvalidInput):
        events.discard(letter_id, *RESOLVER)
    with pytest.raises(NotFound):
        events.replay(12345, *RESOLVER)
    assert events.dead_letters(None)[0].status is DeadLetterStatus.DISCARDED


def test_a_malformed_letter_cannot_replay(events: EventService) -> None:
    letter_id = events.ingest("not json").letter_id
    assert letter_id is not None
    with pytest.raises(InvalidInput, match="malformed"):
        events.replay(letter_id, *RESOLVER)


def test_dead_letters_page_by_id(events: EventService) -> None:
    for n in range(5):
        events.ingest(event("merchant.approved", 900 + n, data=MERCHANT))
    first = events.dead_letters(limit=2)
    second = events.dead_letters(after_id=first[-1].id, limit=10)
    assert [letter.id for letter in first + second] == [1, 2, 3, 4, 5]


# -- batches, retries and infrastructure -----------------------------------------------------------


def test_ingest_many_applies_each_in_order(
    events: EventService, service: CaseService, new_case: Callable[..., int]
) -> None:
    case_id = new_case(CaseType.RETURN_REFUND)
    results = events.ingest_many(
        [
            event("merchant.approved", case_id, data=MERCHANT),
            event("buyer.return_shipped", case_id, data={**BUYER, "tracking_no": "SF1"}),
            "garbage",
            event("parcel.delivered", case_id, tracking_no="SF1"),
        ]
    )
    assert [r.status for r in results] == [
        IngestStatus.APPLIED,
        IngestStatus.APPLIED,
        IngestStatus.DEAD_LETTERED,
        IngestStatus.APPLIED,
    ]
    assert state_of(service, case_id) is CaseState.RETURN_DELIVERED


def test_a_batch_finds_duplicates_recorded_before_it_and_within_it(
    events: EventService, service: CaseService, new_case: Callable[..., int]
) -> None:
    # given a case approved by an event, and the buyer's shipment named by its order
    case_id = new_case(CaseType.RETURN_REFUND)
    approval = event("merchant.approved", case_id, data=MERCHANT)
    assert events.ingest(approval).status is IngestStatus.APPLIED
    pickup = event("buyer.return_shipped", case_id, data={**BUYER, "tracking_no": "SF1"})
    pickup.pop("case_id", None)
    pickup["order_id"] = service.get(case_id).case.order_id

    # when a batch carries the approval again and the pickup twice
    results = events.ingest_many([approval, pickup, dict(pickup)])

    # then the approval is a duplicate of the earlier delivery, and the second pickup of the
    # first (the batch's read of recorded events did not know it)
    assert [r.status for r in results] == [
        IngestStatus.DUPLICATE,
        IngestStatus.APPLIED,
        IngestStatus.DUPLICATE,
    ]
    triggers = [entry.trigger for entry in service.history(case_id)]
    assert triggers.count("ship_back") == 1


def test_a_lost_race_is_planned_again(
    events: EventService,
    service: CaseService,
    new_case: Callable[..., int],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # given a case a concurrent transition moves between the plan and the write
    case_id = new_case(CaseType.RETURN_REFUND, "pickup")
    real_transition = service.transition
    raced: list[bool] = []

    def racing_transition(*args: Any, **kwargs: Any) -> Any:
        if not raced:
            raced.append(True)
            service.fire(case_id, "ship_back", builders.BUYER, data={"tracking_no": "SF3"})
            raise Conflict("a concurrent writer won")
        return real_transition(*args, **kwargs)

    monkeypatch.setattr(service, "transition", racing_transition)

    # when the carrier's pickup loses the race
    result = events.ingest(event("parcel.picked_up", case_id, tracking_no="SF3"))

    # then it was planned again on the new state: the buyer's shipment made it stale
    assert result.status is IngestStatus.IGNORED


def test_a_race_lost_every_time_propagates_for_the_task_to_retry(
    events: EventService,
    service: CaseService,
    new_case: Callable[..., int],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    case_id = new_case(CaseType.RETURN_REFUND, "pickup")

    def always_conflicts(*args: Any, **kwargs: Any) -> Any:
        raise Conflict("a concurrent writer won")

    monkeypatch.setattr(service, "transition", always_conflicts)
    with pytest.raises(Conflict):
        events.ingest(event("parcel.picked_up", case_id, tracking_no="SF3"))
    assert events.dead_letters() == []


class DatabaseDown(Exception):
    pass


def test_an_infrastructure_error_propagates_and_nothing_is_dead_lettered(
    service: CaseService,
    uow_factory: InMemoryUnitOfWorkFactory,
    clock: FakeClock,
    new_case: Callable[..., int],
    db: InMemoryDatabase,
) -> None:
    # given a database that fails when the event is recorded
    case_id = new_case(CaseType.RETURN_REFUND)

    def failing_factory() -> Any:
        return _Failing(uow_factory())

    events = EventService(service, failing_factory, clock)

    # when an event comes in, then the error reaches the caller (the task retries)
    with pytest.raises(DatabaseDown):
        events.ingest(event("merchant.approved", case_id, data=MERCHANT))
    assert db.dead_letters == {}


class _Failing:
    """A unit of work whose event store is down."""

    def __init__(self, inner: Any) -> None:
        self._inner = inner

    def __enter__(self) -> Any:
        uow = self._inner.__enter__()

        class Down:
            def __getattr__(self, name: str) -> Any:
                raise DatabaseDown("connection refused")

        uow.events = Down()
        return uow

    def __exit__(self, *exc: Any) -> None:
        self._inner.__exit__(*exc)


def test_results_serialise_for_the_task_backend(events: EventService) -> None:
    result: IngestResult = events.ingest(event("merchant.approved", 5, data=MERCHANT))
    shown = result.as_json()
    assert shown["status"] == "dead_lettered" and shown["code"] == "not_found"
    assert set(shown) >= {
        "status",
        "source",
        "event_id",
        "case_id",
        "trigger",
        "reason",
        "letter_id",
    }


@pytest.mark.parametrize(("actor", "reason"), [("", "why"), ("admin:ops-1", " ")])
def test_a_dead_letter_is_resolved_by_someone_for_a_reason(
    events: EventService, actor: str, reason: str
) -> None:
    # given a dead letter
    letter_id = events.ingest(event("parcel.lost", 999, tracking_no="SF1")).letter_id
    assert letter_id is not None
    # when someone unnamed, or without a reason, replays or discards it: refused
    with pytest.raises(InvalidInput):
        events.replay(letter_id, actor, reason)
    with pytest.raises(InvalidInput):
        events.discard(letter_id, actor, reason)
    # and with both, who and why are kept with it
    events.discard(letter_id, "admin:ops-1", "the case was closed by hand")
    letter = events.dead_letter(letter_id)
    assert (letter.status, letter.resolved_by, letter.resolution) == (
        DeadLetterStatus.DISCARDED,
        "admin:ops-1",
        "the case was closed by hand",
    )
