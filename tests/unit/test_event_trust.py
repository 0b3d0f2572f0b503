"""Who may say what (RULES.md part C, issue 13): each attack of the issue's "Why" list, refused.

A producer sends only its kind's events; a party event names the case's own merchant or buyer;
a refund result names the attempt and the amount it settles; a parcel event names the case's
parcel. Each refusal is a dead letter with its reason, and the case is untouched.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from typing import Any

import pytest

from config.sources import SourceKind, Sources, default_sources
from workflow.events.ingestion import EventService, IngestStatus
from workflow.service import CaseService
from workflow.states import CaseState, CaseType

from . import builders

S = CaseState
_ids = itertools.count(1)


def event(source: str, type_: str, case_id: int | None, **fields: Any) -> dict[str, Any]:
    envelope: dict[str, Any] = {
        "event_id": f"attack-{next(_ids)}",
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
def events(service: CaseService, uow_factory: Any, clock: Any) -> EventService:
    return EventService(service, uow_factory, clock)


def _history(service: CaseService, case_id: int) -> list[str]:
    return [record.trigger for record in service.history(case_id)]


def test_a_carriers_event_approving_for_a_merchant_is_a_dead_letter(
    events: EventService, service: CaseService, new_case: Callable[..., int]
) -> None:
    # given a submitted case of merchant m1
    case_id = new_case(CaseType.RETURN_REFUND)
    before = _history(service, case_id)

    # when the carrier's source sends merchant.approved, for m1 or for another merchant
    results = [
        events.ingest(
            event("sf-express", "merchant.approved", case_id, data={"merchant_id": merchant})
        )
        for merchant in ("m1", "m2")
    ]

    # then each is a dead letter naming the kind, and the case did not move
    for result in results:
        assert (result.status, result.code) == (IngestStatus.DEAD_LETTERED, "source_not_allowed")
        assert result.reason is not None and "carrier" in result.reason
    assert service.get(case_id).case.state is S.SUBMITTED
    assert _history(service, case_id) == before


def test_the_merchant_portal_acts_only_for_the_cases_own_merchant(
    events: EventService, service: CaseService, new_case: Callable[..., int]
) -> None:
    case_id = new_case(CaseType.RETURN_REFUND)
    other = events.ingest(
        event("merchant-portal", "merchant.approved", case_id, data={"merchant_id": "m2"})
    )
    assert (other.status, other.code) == (IngestStatus.DEAD_LETTERED, "forbidden")
    assert service.get(case_id).case.state is S.SUBMITTED


@pytest.mark.parametrize("source", ["sf-express", "buyer-app"])
def test_a_cancellation_for_another_buyer_is_a_dead_letter(
    events: EventService, service: CaseService, new_case: Callable[..., int], source: str
) -> None:
    # given an approved case of buyer b1
    case_id = new_case(CaseType.RETURN_REFUND, "approved")

    # when buyer.cancelled arrives naming another buyer (from a carrier, or the buyer app)
    result = events.ingest(event(source, "buyer.cancelled", case_id, data={"buyer_id": "b2"}))

    # then it is refused and the case is not cancelled
    assert result.status is IngestStatus.DEAD_LETTERED
    assert result.code == ("source_not_allowed" if source == "sf-express" else "forbidden")
    assert service.get(case_id).case.state is S.APPROVED


@pytest.mark.parametrize(
    ("source", "buyer", "code"),
    [("sf-express", "b1", "source_not_allowed"), ("buyer-app", "b2", "forbidden")],
)
def test_a_bank_account_comes_only_from_the_cases_buyer(
    events: EventService,
    service: CaseService,
    new_case: Callable[..., int],
    source: str,
    buyer: str,
    code: str,
) -> None:
    # given a case waiting for the buyer's bank account
    case_id = new_case(CaseType.RETURN_REFUND, "awaiting_bank_account")
    account = {"account_name": "Mallory", "account_no": "6222020000000666", "bank": "ICBC"}

    # when someone else redirects the refund to their own account
    data = {"buyer_id": buyer, **account}
    result = events.ingest(event(source, "buyer.bank_account_provided", case_id, data=data))

    # then it is refused and no account is recorded
    assert (result.status, result.code) == (IngestStatus.DEAD_LETTERED, code)
    case = service.get(case_id).case
    assert case.state is S.AWAITING_BANK_ACCOUNT
    assert "bank_account" not in case.details


@pytest.mark.parametrize("source", ["sf-express", "wechat-pay"])
def test_a_refund_result_without_amount_and_attempt_is_a_dead_letter(
    events: EventService, service: CaseService, new_case: Callable[..., int], source: str
) -> None:
    # given a refund in flight
    case_id = new_case(CaseType.RETURN_REFUND, "refunding")

    # when refund.succeeded arrives with no amount and no attempt key
    result = events.ingest(event(source, "refund.succeeded", case_id, data={}))

    # then it is refused (by kind for a carrier; for naming nothing from the gateway)
    assert result.status is IngestStatus.DEAD_LETTERED
    if source == "wechat-pay":
        assert result.code == "invalid_input"
        assert result.reason is not None and "attempt" in result.reason
    else:
        assert result.code == "source_not_allowed"
    assert service.get(case_id).case.state is S.REFUNDING


@pytest.mark.parametrize("missing", ["idempotency_key", "amount"])
def test_a_refund_result_names_both_the_attempt_and_the_amount(
    events: EventService, service: CaseService, new_case: Callable[..., int], missing: str
) -> None:
    case_id = new_case(CaseType.RETURN_REFUND, "refunding")
    case = service.get(case_id).case
    data = {"idempotency_key": case.refund_key, "amount": case.refund_amount}
    del data[missing]
    result = events.ingest(event("wechat-pay", "refund.succeeded", case_id, data=data))
    assert (result.status, result.code) == (IngestStatus.DEAD_LETTERED, "invalid_input")
    assert result.reason is not None and f"data.{missing}" in result.reason
    assert service.get(case_id).case.state is S.REFUNDING


def test_a_delivery_naming_only_the_order_moves_nothing(
    events: EventService, service: CaseService, new_case: Callable[..., int]
) -> None:
    # given an approved case whose return has not been sent
    case_id = new_case(CaseType.RETURN_REFUND, "approved")
    order_id = service.get(case_id).case.order_id

    # when the carrier says "delivered" naming only the order
    result = events.ingest(event("sf-express", "parcel.delivered", None, order_id=order_id))

    # then nothing moves: a dead letter naming the missing tracking number
    assert (result.status, result.code) == (IngestStatus.DEAD_LETTERED, "invalid_input")
    assert result.reason is not None and "tracking number" in result.reason
    assert service.get(case_id).case.state is S.APPROVED


def test_a_parcel_unknown_to_a_case_without_a_booked_pickup_moves_nothing(
    events: EventService, service: CaseService, new_case: Callable[..., int]
) -> None:
    case_id = new_case(CaseType.RETURN_REFUND, "approved")
    result = events.ingest(
        event("sf-express", "parcel.delivered", case_id, tracking_no="SF-INVENTED")
    )
    assert (result.status, result.code) == (IngestStatus.DEAD_LETTERED, "invalid_input")
    assert service.get(case_id).case.state is S.APPROVED


def test_the_booked_pickups_first_scan_applies(
    events: EventService, service: CaseService, new_case: Callable[..., int]
) -> None:
    case_id = new_case(CaseType.RETURN_REFUND, "pickup")
    result = events.ingest(event("sf-express", "parcel.picked_up", case_id, tracking_no="SF77"))
    assert result.status is IngestStatus.APPLIED
    assert service.get(case_id).case.details["return_tracking_no"] == "SF77"


def test_an_unconfigured_source_is_a_dead_letter(
    events: EventService, service: CaseService, new_case: Callable[..., int]
) -> None:
    case_id = new_case(CaseType.RETURN_REFUND, "shipped_back")
    tracking = builders.TRIGGER_DATA["ship_back"]["tracking_no"]
    result = events.ingest(event("yto", "parcel.delivered", case_id, tracking_no=tracking))
    assert (result.status, result.code) == (IngestStatus.DEAD_LETTERED, "source_not_allowed")
    assert result.reason is not None and "not a configured producer" in result.reason
    assert service.get(case_id).case.state is S.SHIPPED_BACK


def test_a_configured_source_of_the_right_kind_applies(
    service: CaseService, uow_factory: Any, clock: Any, new_case: Callable[..., int]
) -> None:
    # given yto configured as a carrier
    sources = Sources(sources={**default_sources().sources, "yto": SourceKind.CARRIER})
    events = EventService(service, uow_factory, clock, sources=sources)
    case_id = new_case(CaseType.RETURN_REFUND, "shipped_back")
    tracking = builders.TRIGGER_DATA["ship_back"]["tracking_no"]

    # when it reports the return delivered
    result = events.ingest(event("yto", "parcel.delivered", case_id, tracking_no=tracking))

    # then it applies
    assert result.status is IngestStatus.APPLIED
    assert service.get(case_id).case.state is S.RETURN_DELIVERED


@pytest.mark.parametrize(
    ("source", "type_", "allowed"),
    [
        ("sf-express", "parcel.delivered", True),
        ("sf-express", "refund.succeeded", False),
        ("wechat-pay", "refund.failed", True),
        ("wechat-pay", "parcel.lost", False),
        ("merchant-portal", "merchant.approved", True),
        ("merchant-portal", "buyer.cancelled", False),
        ("buyer-app", "buyer.bank_account_provided", True),
        ("buyer-app", "merchant.approved", False),
        ("order-system", "order.delivered", True),
        ("order-system", "parcel.delivered", False),
        ("sf-express", "order.delivered", False),
        ("nobody", "parcel.delivered", False),
    ],
)
def test_the_default_sources_and_their_kinds(source: str, type_: str, allowed: bool) -> None:
    assert (default_sources().refusal(source, type_) is None) is allowed
