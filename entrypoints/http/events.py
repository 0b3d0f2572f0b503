"""``/events``: producers send events (one or a batch); admins work the dead letters.

Events go through ``EventService.ingest_many`` exactly as from Celery or a file: applied,
duplicate, ignored or dead-lettered, each reported in the 202's ``outcomes``. Envelopes that do
not even parse (a missing field, a naive time) are refused whole with 422 naming the field,
before any is ingested: the producer is online and can fix them, which a queue's consumer
cannot.
"""

from __future__ import annotations

from collections import Counter
from enum import StrEnum
from typing import Annotated, Any

from fastapi import APIRouter, Body, Path, Query, Request
from fastapi.responses import Response
from pydantic import ValidationError

from entrypoints import views
from entrypoints.http.auth import Authenticated, require
from entrypoints.http.cases import IdempotencyKey
from entrypoints.http.context import api_of, idempotent, json_response
from entrypoints.http.problems import ProblemError, responses
from entrypoints.http.schemas import (
    MAX_ID,
    DeadLetterList,
    DeadLetterOut,
    IngestOut,
    IngestOutcome,
    ResolveIn,
)
from entrypoints.http.scopes import TokenRole
from workflow.events.envelope import Envelope
from workflow.events.ingestion import IngestResult, IngestStatus
from workflow.model import DeadLetter, DeadLetterStatus

router = APIRouter(prefix="/events", tags=["events"])


class LetterFilter(StrEnum):
    OPEN = "open"
    REPLAYED = "replayed"
    DISCARDED = "discarded"
    ALL = "all"


LetterId = Annotated[int, Path(ge=1, le=MAX_ID, description="The dead letter's id.")]

#: The request body of ``POST /events`` in the OpenAPI document: one envelope or a batch.
EVENTS_BODY_SCHEMA: dict[str, Any] = {
    "oneOf": [
        {"$ref": "#/components/schemas/AftersalesEvent"},
        {
            "type": "array",
            "items": {"$ref": "#/components/schemas/AftersalesEvent"},
            "minItems": 1,
        },
    ]
}


#: A carrier's event as the default sources admit it (``config/sources.toml``).
EVENT_EXAMPLE: dict[str, Any] = {
    "event_id": "sf-20261120-0001",
    "source": "sf-express",
    "type": "parcel.delivered",
    "occurred_at": "2026-11-20T10:00:00+08:00",
    "order_id": "o-1001",
    "tracking_no": "SF1001",
    "data": {"recipient": "merchant"},
}


def _envelopes(body: Any, max_batch: int) -> list[tuple[dict[str, Any], Envelope]]:
    """(the document as sent, its envelope) per event; 422 naming the first bad field."""
    if isinstance(body, dict):
        documents, prefix = [body], "body"
    elif isinstance(body, list) and body:
        documents, prefix = body, "body"
    else:
        raise ProblemError(
            "invalid-input",
            "send one event (a JSON object) or a non-empty array of them",
            field="body",
        )
    if len(documents) > max_batch:
        raise ProblemError(
            "invalid-input",
            f"at most {max_batch} events per request, not {len(documents)}",
            field="body",
        )
    parsed = []
    for index, document in enumerate(documents):
        where = f"{prefix}.{index}" if isinstance(body, list) else prefix
        if not isinstance(document, dict):
            raise ProblemError("invalid-input", f"{where}: an event is a JSON object", field=where)
        try:
            parsed.append((document, Envelope.model_validate(document)))
        except ValidationError as error:
            first = error.errors()[0]
            location = ".".join([where, *(str(part) for part in first["loc"])])
            raise ProblemError(
                "invalid-input",
                f"{location}: {first['msg']}",
                field=location,
                errors=[
                    {"field": ".".join([where, *(str(p) for p in e["loc"])]), "message": e["msg"]}
                    for e in error.errors()
                ],
            ) from None
    return parsed


def outcome_data(result: IngestResult) -> dict[str, Any]:
    return result.as_json()


def letter_data(letter: DeadLetter) -> dict[str, Any]:
    envelope = letter.envelope
    return {
        "id": letter.id,
        "status": letter.status,
        "source": letter.source,
        "event_id": letter.event_id,
        "type": envelope.get("type") if isinstance(envelope.get("type"), str) else None,
        "code": letter.code,
        "reason": letter.reason,
        "attempts": letter.attempts,
        "received_at": letter.received_at,
        "resolved_at": letter.resolved_at,
        "resolved_by": letter.resolved_by,
        "resolution": letter.resolution,
        "envelope": views.masked(envelope),
    }


@router.post(
    "",
    status_code=202,
    response_model=IngestOut,
    summary="Ingest events",
    description="One event envelope (docs/events.md) or an array of them, applied in order, "
    "an array in few transactions with a savepoint per event (one event's failure undoes only "
    "that event). 202 with one outcome per event: applied, duplicate, ignored "
    "or dead_lettered (with the reason). A `producer:SOURCE` token sends only events whose "
    "`source` is SOURCE (403 otherwise, nothing ingested); admins send any source's. An "
    "event whose source is not configured, or outside its source's kind (carrier `parcel.*`, "
    "payment `refund.*`, merchant_portal `merchant.*`, buyer_app `buyer.*`, orders "
    "`order.*`), is 403 and nothing is ingested.",
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {
                "application/json": {"schema": EVENTS_BODY_SCHEMA, "example": EVENT_EXAMPLE}
            },
        }
    },
    responses=responses(400, 401, 403, 409, 413, 415, 422, 429, 503),
)
def ingest_events(
    request: Request,
    principal: Authenticated,
    body: Annotated[Any, Body(include_in_schema=False)] = None,
    idempotency_key: IdempotencyKey = None,
) -> Response:
    require(principal, TokenRole.ADMIN, TokenRole.PRODUCER)
    api = api_of(request)
    envelopes = _envelopes(body, api.settings.max_batch)
    if principal.role is TokenRole.PRODUCER:
        foreign = sorted({e.source for _, e in envelopes if e.source != principal.subject})
        if foreign:
            raise ProblemError(
                "forbidden",
                f"this token sends events of source {principal.subject} only, not "
                + ", ".join(foreign),
            )
    # Who may say what (config/sources.toml): refused whole, nothing ingested, as above.
    for index, (_, envelope) in enumerate(envelopes):
        refusal = api.events.sources.refusal(envelope.source, envelope.type.value)
        if refusal is not None:
            where = f"body.{index}" if isinstance(body, list) else "body"
            raise ProblemError("forbidden", f"{where}: {refusal}", field=f"{where}.type")

    def action() -> Response:
        # The documents as sent: a dead letter keeps what the producer wrote.
        results = api.events.ingest_many([document for document, _ in envelopes])
        counts = Counter(result.status for result in results)
        summary = {status.value: counts.get(status, 0) for status in IngestStatus}
        data = {
            "summary": {**summary, "total": len(results)},
            "outcomes": [outcome_data(result) for result in results],
        }
        return json_response(IngestOut, data, status=202)

    return idempotent(request, principal, idempotency_key, action)


@router.get(
    "/dead-letters",
    response_model=DeadLetterList,
    summary="List dead letters (admin)",
    description="Events that could not apply, oldest first, a page at a time.",
    responses=responses(401, 403, 422, 429, 503),
)
def list_dead_letters(
    request: Request,
    principal: Authenticated,
    status: Annotated[LetterFilter, Query(description="Which letters.")] = LetterFilter.OPEN,
    after: Annotated[int | None, Query(ge=0, le=MAX_ID)] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
) -> Response:
    require(principal, TokenRole.ADMIN)
    wanted = None if status is LetterFilter.ALL else DeadLetterStatus(status.value)
    letters = api_of(request).events.dead_letters(wanted, after, limit + 1)
    page = letters[:limit]
    next_after = page[-1].id if len(letters) > limit and page else None
    data = {"dead_letters": [letter_data(letter) for letter in page], "next_after": next_after}
    return json_response(DeadLetterList, data)


@router.get(
    "/dead-letters/{letter_id}",
    response_model=DeadLetterOut,
    summary="Get a dead letter (admin)",
    responses=responses(401, 403, 404, 422, 429, 503),
)
def get_dead_letter(request: Request, letter_id: LetterId, principal: Authenticated) -> Response:
    require(principal, TokenRole.ADMIN)
    return json_response(DeadLetterOut, letter_data(api_of(request).events.dead_letter(letter_id)))


@router.post(
    "/dead-letters/{letter_id}/replay",
    response_model=IngestOutcome,
    summary="Replay a dead letter (admin)",
    description="Ingest an open letter's event again, with a `reason` kept with the letter "
    "and the admin's name. When it applies (or is ignored, or was "
    "applied meanwhile) the letter is `replayed`; when it still fails, 409 "
    "`dead-letter-still-fails` with the new `code` and reason, and the letter stays open.",
    responses=responses(400, 401, 403, 404, 409, 413, 415, 422, 429, 503),
)
def replay_dead_letter(
    request: Request,
    letter_id: LetterId,
    body: ResolveIn,
    principal: Authenticated,
    idempotency_key: IdempotencyKey = None,
) -> Response:
    require(principal, TokenRole.ADMIN)
    api = api_of(request)

    def action() -> Response:
        result = api.events.replay(letter_id, str(principal.actor()), body.reason)
        if result.status is IngestStatus.DEAD_LETTERED:
            raise ProblemError(
                "dead-letter-still-fails",
                f"dead letter {letter_id} still fails: {result.reason}",
                code=result.code,
                letter_id=letter_id,
            )
        return json_response(IngestOutcome, outcome_data(result))

    return idempotent(request, principal, idempotency_key, action)


@router.post(
    "/dead-letters/{letter_id}/discard",
    response_model=DeadLetterOut,
    summary="Discard a dead letter (admin)",
    description="Set an open letter aside: looked at, it will not apply. The `reason` and the "
    "admin are kept with the letter.",
    responses=responses(400, 401, 403, 404, 409, 413, 415, 422, 429, 503),
)
def discard_dead_letter(
    request: Request,
    letter_id: LetterId,
    body: ResolveIn,
    principal: Authenticated,
    idempotency_key: IdempotencyKey = None,
) -> Response:
    require(principal, TokenRole.ADMIN)
    api = api_of(request)

    def action() -> Response:
        letter = api.events.discard(letter_id, str(principal.actor()), body.reason)
        return json_response(DeadLetterOut, letter_data(letter))

    return idempotent(request, principal, idempotency_key, action)
