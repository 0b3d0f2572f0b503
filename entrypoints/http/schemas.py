"""Request and response bodies of the HTTP API, as pydantic models for validation and OpenAPI.

The response shapes are ``entrypoints.views``' JSON (the CLI's ``--json``), so a case looks the
same whichever way it is read; ``allowed_triggers`` is added for the caller.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from workflow.events.ingestion import IngestStatus
from workflow.model import DeadLetterStatus
from workflow.payloads import Instant
from workflow.queries import Party
from workflow.states import CaseState, CaseType

#: Largest id the databases store (BIGINT); larger ones are refused as invalid input.
MAX_ID = 2**63 - 1
Id = Annotated[int, Field(ge=1, le=MAX_ID)]
Ident = Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.:\-]+$")]
#: Some text that is not only blanks (it is stripped), and without NUL characters.
Reason = Annotated[
    str, Field(min_length=1, max_length=2000, pattern=r"^[^\x00]*[^\s\x00][^\x00]*$")
]


class _Out(BaseModel):
    model_config = ConfigDict(extra="forbid")


class _In(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)


# -- cases -------------------------------------------------------------------------------------


class DeadlineOut(_Out):
    kind: str
    due_at: datetime
    #: The trigger the system fires when the deadline passes.
    trigger: str


class ItemOut(_Out):
    sku: str
    quantity: int
    unit_price: int = Field(description="fen")
    amount: int = Field(description="fen")


class GiftOut(_Out):
    sku: str
    quantity: int
    value: int = Field(description="fen")


class PaymentOut(_Out):
    channel: str
    amount: int = Field(description="fen")
    paid_at: datetime


class CaseOut(_Out):
    id: int
    type: CaseType
    state: CaseState
    terminal: bool
    version: int = Field(description="Rises by one per transition; the ETag is this number.")
    order_id: str
    buyer_id: str
    merchant_id: str
    category: str
    reason: str
    description: str
    requested_amount: int | None = Field(description="fen")
    refund_amount: int = Field(description="fen")
    gift_deduction: int = Field(description="fen")
    refund_route: str | None
    refund_attempts: int
    deadline: DeadlineOut | None
    items: list[ItemOut]
    gifts: list[GiftOut]
    payment: PaymentOut
    delivered_at: datetime | None
    created_at: datetime
    updated_at: datetime
    details: dict[str, Any] = Field(description="Facts gathered on the way; bank accounts masked.")
    allowed_triggers: list[str] = Field(description="What the caller may fire now.")


class CaseListItem(CaseOut):
    waits_for: Party | None = Field(
        description="Who the case waits for now: its deadline's party, else its state's; null "
        "once it has ended."
    )
    overdue: bool = Field(description="Its deadline has passed (the timeout has not acted yet).")


class CaseList(_Out):
    cases: list[CaseListItem]
    as_of: datetime = Field(
        description="The server's time the page was read at: what `overdue` and the deadlines' "
        "countdowns are measured from."
    )
    next_cursor: str | None = Field(
        description="Pass as `cursor` (with the same filters and sort) for the next page; null "
        "on the last page."
    )
    next_after: int | None = Field(
        description="For the sort by id ascending: pass as `after` for the next page (the same "
        "page as `cursor`); null at the end and for other sorts."
    )


class MerchantFiguresOut(_Out):
    merchant_id: str
    cases: int = Field(description="Cases submitted in the period.")
    reviewed: int = Field(
        description="Of those, cases whose review ended: approved, rejected, or a timeout acted."
    )
    median_review_seconds: float | None = Field(
        description="Median time from submission to the end of the review; null if none ended."
    )
    timed_out: int = Field(description="Cases where a deadline waiting for the merchant fired.")
    timeout_share: float = Field(description="timed_out / cases (0 to 1).")
    disputed: int = Field(description="Cases that were ever disputed (escalated to the platform).")
    dispute_rate: float = Field(description="disputed / cases (0 to 1).")


class MerchantStats(_Out):
    start: datetime = Field(description="The period (`from`): cases submitted at or after it ...")
    end: datetime = Field(description="... and before this (`to`).")
    merchants: list[MerchantFiguresOut]


class HistoryEntry(_Out):
    seq: int = Field(description="The case version this transition produced.")
    trigger: str
    from_state: CaseState | None
    to_state: CaseState
    actor: str
    source: str | None = Field(
        description="The channel it came through: `cli`, `api token #7`, "
        "`event sf-express/EVENT_ID`, `timer`, `worker`, `demo`; null for records written "
        "before sources were recorded."
    )
    reason: str | None
    at: datetime
    data: dict[str, Any]


class FireIn(_In):
    trigger: Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[a-z_]+$")]
    data: dict[str, Any] | None = Field(default=None, description="The trigger's own fields.")
    reason: Annotated[str, Field(max_length=2000)] | None = Field(
        default=None, description="Required for admins, reject and fail_inspection."
    )


class FireOut(_Out):
    case: CaseOut
    transitions: list[HistoryEntry]
    replayed: bool = Field(description="True when the idempotency key had been used: nothing new.")


class DiagramOut(_Out):
    type: CaseType
    state: CaseState
    mermaid: str = Field(description="stateDiagram-v2 text; the current state has class `current`.")


class TimerOut(_Out):
    id: int
    kind: str
    trigger: str
    state: CaseState
    status: str = Field(description="pending, claimed, fired or cancelled")
    due_at: datetime
    created_at: datetime
    fired_at: datetime | None
    lateness_ms: int | None = Field(description="How long after due_at it fired.")


class TimersOut(_Out):
    case_id: int
    deadline: DeadlineOut | None = Field(description="The pending deadline, if any.")
    timers: list[TimerOut] = Field(description="Every timer the case armed, oldest first.")


def _exactly_one(schema: dict[str, Any]) -> None:
    """``until`` or ``hours``, either one and never null."""
    for name in ("until", "hours"):
        field = schema["properties"][name]
        (variant,) = [v for v in field.pop("anyOf") if v != {"type": "null"}]
        field.update(variant)
        field.pop("default", None)
    schema["oneOf"] = [{"required": ["until"]}, {"required": ["hours"]}]


class ExtendIn(_In):
    """Either ``until`` or ``hours``: the document says so with a ``oneOf``, and at most the
    configured longest extension (``AFTERSALES_MAX_DEADLINE_EXTENSION``) past the current due
    time, which the document states as the maximum of ``hours``."""

    model_config = ConfigDict(json_schema_extra=lambda schema: _exactly_one(schema))

    reason: Reason
    until: Instant | None = Field(
        default=None,
        description="The new due time (with an offset), later than the current one by at most "
        "the longest extension.",
    )
    hours: Annotated[float, Field(gt=0, le=24 * 365)] | None = Field(
        default=None, description="Hours added to the current due time."
    )

    @field_validator("until", "hours", mode="before")
    @classmethod
    def _not_null(cls, value: Any) -> Any:
        if value is None:
            raise ValueError("leave it out instead of sending null")
        return value

    @model_validator(mode="after")
    def _one_of(self) -> ExtendIn:
        if (self.until is None) == (self.hours is None):
            raise ValueError("give either until or hours, not both")
        return self


# -- events ------------------------------------------------------------------------------------


class ResolveIn(_In):
    """Replaying or discarding a dead letter: why (kept with the letter, with the admin)."""

    reason: Reason


class IngestOutcome(_Out):
    status: IngestStatus
    source: str
    event_id: str | None
    type: str | None
    case_id: int | None
    trigger: str | None
    implied: list[str]
    state: CaseState | None
    reason: str | None
    code: str | None
    letter_id: int | None


class IngestSummary(_Out):
    applied: int
    duplicate: int
    ignored: int
    dead_lettered: int
    total: int


class IngestOut(_Out):
    summary: IngestSummary
    outcomes: list[IngestOutcome] = Field(description="One per event, in the order sent.")


class DeadLetterOut(_Out):
    id: int
    status: DeadLetterStatus
    source: str
    event_id: str | None
    type: str | None
    code: str
    reason: str
    attempts: int
    received_at: datetime
    resolved_at: datetime | None
    resolved_by: str | None = Field(description="The admin who replayed or discarded it.")
    resolution: str | None = Field(description="Why it was replayed or discarded.")
    envelope: dict[str, Any] = Field(description="As received; bank account numbers masked.")


class DeadLetterList(_Out):
    dead_letters: list[DeadLetterOut]
    next_after: int | None


# -- orders ------------------------------------------------------------------------------------


class OrderRefusal(_Out):
    index: int = Field(description="The order's position in the batch, from 1.")
    order_id: str | None
    reason: str


class OrderImportOut(_Out):
    imported: int = Field(description="Orders new to the service.")
    updated: int = Field(description="Orders known before whose delivery time this set.")
    refused: list[OrderRefusal] = Field(description="The orders not imported, with why.")


class OrderLineAccountOut(_Out):
    sku: str
    category: str
    unit_price: int = Field(description="fen")
    quantity: int = Field(description="Units ordered.")
    open_quantity: int = Field(description="Units under open cases.")
    refunded_quantity: int = Field(description="Units refunded (for a return: that came back).")
    refunded_amount: int = Field(description="fen refunded for this line")


class OrderAccountOut(_Out):
    order_id: str
    buyer_id: str
    merchant_id: str
    payment: PaymentOut
    delivered_at: datetime | None
    migrated: bool = Field(description="Built from an existing case by the migration.")
    paid: int = Field(description="fen")
    refunded: int = Field(description="fen refunded by ended cases")
    pending: int = Field(description="fen open cases may still refund")
    refundable: int = Field(description="fen a new case may still refund")
    lines: list[OrderLineAccountOut]
    gifts: list[GiftOut]


# -- operations --------------------------------------------------------------------------------


class Health(_Out):
    status: str


class Check(_Out):
    ok: bool
    detail: str | None = None


class Readiness(_Out):
    status: Literal["ready", "not_ready"]
    checks: dict[str, Check] = Field(
        default_factory=dict,
        description="Per dependency (database, broker); present for admins only.",
    )
