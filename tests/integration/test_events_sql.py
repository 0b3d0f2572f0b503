"""Inbound events on real databases: dedupe inside the transition's transaction, racing
deliveries, dead letters that persist and replay."""

from __future__ import annotations

import threading
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from config.policy import load_policy
from persistence.statements import KNOWN_EVENTS_CHUNK
from persistence.unit_of_work import SqlUnitOfWorkFactory
from workflow.clock import FakeClock
from workflow.events.ingestion import EventService, IngestResult, IngestStatus
from workflow.model import SYSTEM, Actor, DeadLetterStatus
from workflow.service import CaseService
from workflow.states import CaseState, Role

from .conftest import submit_with_order

NOW = datetime(2026, 11, 20, 2, 0, tzinfo=UTC)
MERCHANT = Actor(Role.MERCHANT, "m1")
BUYER = Actor(Role.BUYER, "b1")
THREADS = 4

#: Who resolves dead letters in these tests, and why.
RESOLVER = ("admin:ops-1", "checked by hand")


def application(order_id: str = "o-1") -> dict[str, Any]:
    return {
        "type": "return_refund",
        "order_id": order_id,
        "buyer_id": "b1",
        "merchant_id": "m1",
        "category": "clothing",
        "reason": "no_reason",
        "payment": {
            "channel": "wechat_pay",
            "amount": 19_900,
            "paid_at": "2026-11-15T10:00:00+08:00",
        },
        "delivered_at": "2026-11-18T15:00:00+08:00",
        "items": [{"sku": "jacket", "quantity": 1, "unit_price": 19_900}],
    }


def envelope(event_id: str, type_: str, case_id: int, **fields: Any) -> dict[str, Any]:
    return {
        "event_id": event_id,
        "source": {"parcel": "sf-express", "buyer": "buyer-app"}.get(
            type_.split(".")[0], "merchant-portal"
        ),
        "type": type_,
        "occurred_at": "2026-11-20T10:00:00+08:00",
        "case_id": case_id,
        **fields,
    }


@pytest.fixture
def service(uow_factory: SqlUnitOfWorkFactory) -> CaseService:
    return CaseService(uow_factory, FakeClock(NOW), load_policy())


@pytest.fixture
def events(service: CaseService, uow_factory: SqlUnitOfWorkFactory) -> EventService:
    return EventService(service, uow_factory, service.clock)


@pytest.fixture
def approved(service: CaseService) -> int:
    case_id = submit_with_order(service, application()).case.id
    assert case_id is not None
    service.fire(case_id, "approve", MERCHANT)
    # The carrier's pickup is booked: its first scan tells the parcel's number.
    service.fire(case_id, "book_pickup", SYSTEM, data={"carrier": "SF", "pickup_code": "PK-1"})
    return case_id


def recorded(engine: Engine) -> list[tuple[str, str, int | None]]:
    with engine.connect() as connection:
        rows = connection.execute(
            sa.text("SELECT source, event_id, case_id FROM inbound_events ORDER BY event_id")
        )
        return [(row[0], row[1], row[2]) for row in rows]


def in_threads(work: Callable[[int], IngestResult]) -> list[IngestResult]:
    """Run ``work(i)`` in THREADS threads started together; re-raise what any of them raised."""
    barrier = threading.Barrier(THREADS)
    results: list[IngestResult] = []
    failures: list[BaseException] = []

    def run(index: int) -> None:
        try:
            barrier.wait()
            results.append(work(index))
        except BaseException as exc:  # surfaced below; a thread cannot fail the test itself
            failures.append(exc)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(THREADS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert failures == []
    return results


def test_the_event_is_recorded_with_its_transition_and_a_redelivery_writes_nothing(
    events: EventService, service: CaseService, approved: int, engine: Engine
) -> None:
    # given a pickup that applied
    pickup = envelope("p-1", "parcel.picked_up", approved, tracking_no="SF100")
    assert events.ingest(pickup).status is IngestStatus.APPLIED
    history = service.history(approved)

    # when it is delivered again
    again = events.ingest(pickup)

    # then it is a duplicate; the record names the case and nothing else was written
    assert again.status is IngestStatus.DUPLICATE
    assert service.history(approved) == history
    assert recorded(engine) == [("sf-express", "p-1", approved)]
    assert history[-1].idempotency_key == "event:sf-express:p-1"


def test_a_refused_event_leaves_no_record_and_applies_when_it_comes_again_later(
    events: EventService, service: CaseService, engine: Engine
) -> None:
    # given a submitted case, and a receipt confirmation that came far too early
    case_id = submit_with_order(service, application()).case.id
    assert case_id is not None
    early = envelope("m-9", "merchant.receipt_confirmed", case_id, data={"merchant_id": "m1"})
    refused = events.ingest(early)
    assert (refused.status, refused.code) == (IngestStatus.DEAD_LETTERED, "not_allowed")

    # then the transaction that refused it recorded nothing
    assert recorded(engine) == []

    # and once the case is ready the redelivered event applies, and a replay closes the letter
    service.fire(case_id, "approve", MERCHANT)
    service.fire(case_id, "ship_back", BUYER, data={"tracking_no": "SF100"})
    assert events.ingest(early).status is IngestStatus.APPLIED
    assert refused.letter_id is not None
    assert events.replay(refused.letter_id, *RESOLVER).status is IngestStatus.DUPLICATE
    assert events.dead_letters() == []


def test_known_names_the_events_recorded_or_dead_lettered_and_no_others(
    events: EventService, approved: int
) -> None:
    # given an event that was refused (kept as a dead letter) and one that applied
    early = envelope("m-9", "merchant.receipt_confirmed", approved, data={"merchant_id": "m1"})
    assert events.ingest(early).status is IngestStatus.DEAD_LETTERED
    pickup = envelope("p-1", "parcel.picked_up", approved, tracking_no="SF100")
    assert events.ingest(pickup).status is IngestStatus.APPLIED

    # when asked about them among more unknown ids than one statement takes
    never = [("sf-express", f"n-{i}") for i in range(KNOWN_EVENTS_CHUNK + 7)]
    asked = [("merchant-portal", "m-9"), *never, ("sf-express", "p-1"), ("sf-express", "m-9")]
    found = events.known(asked)

    # then exactly those two are known, whichever chunk they were in
    assert found == {("merchant-portal", "m-9"), ("sf-express", "p-1")}
    assert events.known([]) == set()


def test_the_same_event_from_four_workers_at_once_applies_once(
    events: EventService, service: CaseService, approved: int, engine: Engine
) -> None:
    # given a delivery that implies the pickup (two transitions in one transaction)
    delivered = envelope("d-1", "parcel.delivered", approved, tracking_no="SF100")

    # when four workers ingest it at the same moment
    results = in_threads(lambda _index: events.ingest(dict(delivered)))

    # then one applied it and the others found it recorded
    statuses = sorted(result.status.value for result in results)
    assert statuses == ["applied"] + ["duplicate"] * (THREADS - 1)
    triggers = [entry.trigger for entry in service.history(approved)]
    assert triggers == [
        "submit",
        "approve",
        "book_pickup",
        "record_pickup",
        "record_return_delivery",
    ]
    assert recorded(engine) == [("sf-express", "d-1", approved)]
    assert events.dead_letters(None) == []


def test_different_events_racing_on_one_case_are_planned_again(
    events: EventService, service: CaseService, approved: int
) -> None:
    # given four pickups of the same parcel under different ids (four carrier systems)
    def ingest(index: int) -> IngestResult:
        return events.ingest(
            envelope(f"p-{index}", "parcel.picked_up", approved, tracking_no="SF100")
        )

    # when they race
    results = in_threads(ingest)

    # then the first applied, and the losers saw the new state on their next try: stale
    statuses = sorted(result.status.value for result in results)
    assert statuses == ["applied"] + ["ignored"] * (THREADS - 1)
    assert service.get(approved).case.state is CaseState.SHIPPED_BACK


def test_dead_letters_persist_count_attempts_page_and_resolve(
    events: EventService, service: CaseService
) -> None:
    # given events that cannot apply: an unknown case (with Chinese text), a malformed line
    unknown = envelope(
        "m-1", "merchant.rejected", 404, data={"merchant_id": "m1", "reason": "商品已使用"}
    )
    first = events.ingest(unknown)
    events.ingest('{"event_id": "x", "source": ')
    events.ingest(unknown)

    # then they are stored with their envelope, the repeated one once with two attempts
    letters = events.dead_letters()
    assert [(letter.code, letter.attempts) for letter in letters] == [
        ("not_found", 2),
        ("invalid_input", 1),
    ]
    assert letters[0].envelope == unknown and letters[0].id == first.letter_id
    assert letters[1].envelope == {"raw": '{"event_id": "x", "source": '}
    assert [letter.id for letter in events.dead_letters(limit=1, after_id=letters[0].id)] == [
        letters[1].id
    ]

    # when one is discarded and the other replayed once its case exists
    assert letters[1].id is not None and letters[0].id is not None
    events.discard(letters[1].id, *RESOLVER)
    case_id = submit_with_order(service, application()).case.id
    assert case_id == 1  # the id the letter's envelope names is still unknown: 404
    still = events.replay(letters[0].id, *RESOLVER)

    # then the replay still fails: one more attempt on the same letter, still open
    assert still.status is IngestStatus.DEAD_LETTERED and still.letter_id == letters[0].id
    stored = events.dead_letter(letters[0].id)
    assert (stored.status, stored.attempts) == (DeadLetterStatus.OPEN, 3)
    assert events.dead_letter(letters[1].id).status is DeadLetterStatus.DISCARDED
    assert [letter.id for letter in events.dead_letters()] == [letters[0].id]


def test_events_a_failed_task_could_not_ingest_are_kept_as_dead_letters_and_replay(
    events: EventService, approved: int
) -> None:
    # given one event that applied and one that never got through (its task failed on a bug)
    applied = envelope("p-1", "parcel.picked_up", approved, tracking_no="SF100")
    assert events.ingest(applied).status is IngestStatus.APPLIED
    lost = envelope("d-1", "parcel.delivered", approved, tracking_no="SF100")
    # when the failed task's hook keeps both
    kept = events.keep_failed([applied, lost], "ingestion failed (RuntimeError: boom)")
    # then only the one that did not apply became a dead letter, naming the failure
    assert [(result.event_id, result.code) for result in kept] == [("d-1", "ingest_failed")]
    (letter,) = events.dead_letters()
    assert (letter.event_id, letter.code) == ("d-1", "ingest_failed")
    assert "RuntimeError: boom" in letter.reason
    # and replaying it (the bug fixed) applies the event
    assert events.replay(kept[0].letter_id or 0, *RESOLVER).status is IngestStatus.APPLIED
    assert events.dead_letters() == []
