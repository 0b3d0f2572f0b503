"""The case queue: which cases to list, in which order, a page at a time, and what each row
tells an operator (the next deadline and who it waits for); and the service figures of each
merchant over a period.

``CaseQuery`` is what the console's queue page and ``GET /cases`` ask; ``CaseRepository.search``
answers it in the memory, SQLite and PostgreSQL stores, ``CaseService.search`` narrows it to
what the actor may see. Paging is by keyset: a ``Cursor`` holds the last row's sort key, so the
next page starts after it in the index, however deep it is (no OFFSET).
"""

from __future__ import annotations

import base64
import binascii
import json
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from enum import StrEnum

from workflow.clock import ensure_utc
from workflow.errors import Forbidden, InvalidInput
from workflow.model import Actor, Case, Timer
from workflow.states import TERMINAL_STATES, CaseState, CaseType, Role

#: The most rows one page holds.
MAX_PAGE = 500


class CaseSort(StrEnum):
    """The order of a case list; ties are broken by case id, so the order is total."""

    #: Case id: the order cases were submitted in (the list's historical order).
    ID = "id"
    #: The pending deadline's due time; cases without one come after all that have one, by id.
    DEADLINE = "deadline"
    #: The submission time (``created_at``): ascending is oldest first.
    AGE = "age"


class Party(StrEnum):
    """Who a case waits for now."""

    BUYER = "buyer"
    MERCHANT = "merchant"
    #: The platform's staff or its own workers (a dispute, a refund to retry or to start).
    PLATFORM = "platform"
    #: A parcel in transit.
    CARRIER = "carrier"
    #: The payment gateway's answer to a refund.
    PAYMENT = "payment"


#: Who each deadline waits for, by timer kind (``definitions.TIMERS``; a test checks every kind
#: is here): the party whose silence lets the timeout act.
TIMER_WAITS_FOR: dict[str, Party] = {
    "merchant_review": Party.MERCHANT,
    # A refund_only needing consent: the merchant's silence puts it before the platform.
    "merchant_consent": Party.MERCHANT,
    "return_shipment": Party.BUYER,
    "return_transit": Party.CARRIER,
    "merchant_receipt": Party.MERCHANT,
    "merchant_inspection": Party.MERCHANT,
    "replacement_shipment": Party.MERCHANT,
    "repair_completion": Party.MERCHANT,
    "outbound_transit": Party.CARRIER,
    "buyer_confirmation": Party.BUYER,
    "dispute_window": Party.BUYER,
    "bank_account_reminder": Party.BUYER,
    "bank_account_escalation": Party.BUYER,
    "refund_retry": Party.PLATFORM,
}

#: Who an open case without a pending deadline waits for, by state.
STATE_WAITS_FOR: dict[CaseState, Party] = {
    CaseState.SUBMITTED: Party.MERCHANT,
    CaseState.APPROVED: Party.BUYER,
    CaseState.PICKUP: Party.CARRIER,
    CaseState.SHIPPED_BACK: Party.CARRIER,
    CaseState.RETURN_DELIVERED: Party.MERCHANT,
    CaseState.RECEIVED: Party.MERCHANT,
    CaseState.INSPECTED: Party.PLATFORM,
    CaseState.REFUNDING: Party.PAYMENT,
    CaseState.REFUND_FAILED: Party.PLATFORM,
    CaseState.AWAITING_BANK_ACCOUNT: Party.BUYER,
    CaseState.SHIPPED_TO_BUYER: Party.CARRIER,
    CaseState.DELIVERED_TO_BUYER: Party.BUYER,
    CaseState.REJECTED: Party.BUYER,
    CaseState.DISPUTED: Party.PLATFORM,
}

#: Timer kinds whose firing is a timeout acting for a silent merchant (the service figures).
MERCHANT_TIMEOUTS: frozenset[str] = frozenset(
    kind for kind, party in TIMER_WAITS_FOR.items() if party is Party.MERCHANT
)


def waiting_for(case: Case, deadline: Timer | None) -> Party | None:
    """The party the case waits for: the pending deadline's, else the state's; None once the
    case has ended."""
    if case.state in TERMINAL_STATES:
        return None
    if deadline is not None and deadline.kind in TIMER_WAITS_FOR:
        return TIMER_WAITS_FOR[deadline.kind]
    return STATE_WAITS_FOR.get(case.state)


@dataclass(frozen=True)
class Cursor:
    """Where a page ended: the last row's sort key and id, under the sort it was read with.

    ``key`` is the due time (``DEADLINE``; None past the cases that have a deadline), the
    submission time (``AGE``) or None (``ID``). Clients see it only as the opaque text of
    ``encode``."""

    sort: CaseSort
    descending: bool
    key: datetime | None
    case_id: int

    def encode(self) -> str:
        data = {
            "s": self.sort.value,
            "d": self.descending,
            "k": self.key.isoformat() if self.key else None,
            "i": self.case_id,
        }
        text = json.dumps(data, separators=(",", ":"))
        return base64.urlsafe_b64encode(text.encode()).decode().rstrip("=")

    @classmethod
    def decode(cls, text: str) -> Cursor:
        """The cursor ``encode`` wrote; ``ValueError`` for anything else."""
        try:
            raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
            data = json.loads(raw)
            sort = CaseSort(data["s"])
            descending = data["d"]
            key = datetime.fromisoformat(data["k"]) if data["k"] is not None else None
            case_id = data["i"]
        except (binascii.Error, ValueError, TypeError, KeyError, UnicodeDecodeError):
            raise ValueError("not a cursor this service wrote") from None
        if not isinstance(descending, bool) or type(case_id) is not int or case_id < 0:
            raise ValueError("not a cursor this service wrote")
        if key is not None and key.tzinfo is None:
            raise ValueError("not a cursor this service wrote")
        if (sort is CaseSort.ID and key is not None) or (sort is CaseSort.AGE and key is None):
            raise ValueError("not a cursor this service wrote")
        return cls(sort, descending, key, case_id)


@dataclass(frozen=True)
class CaseQuery:
    """Which cases, in which order, from where, how many. Filters combine with AND; an empty
    ``states`` and None mean "any"."""

    #: One state (the list's historical filter); combined with ``states`` as either of them.
    state: CaseState | None = None
    states: frozenset[CaseState] = frozenset()
    type: CaseType | None = None
    merchant_id: str | None = None
    buyer_id: str | None = None
    order_id: str | None = None
    #: Search: the case id, order id, buyer id, or a return or outbound tracking number, equal
    #: to this text (each is an index lookup).
    text: str | None = None
    #: Only cases whose pending deadline has passed (due at or before now).
    overdue: bool = False
    #: Only cases whose pending deadline is due within this much time from now (overdue ones
    #: included).
    due_within: timedelta | None = None
    #: True: only cases that were ever disputed (escalated to the platform); False: only those
    #: never disputed.
    disputed: bool | None = None
    sort: CaseSort = CaseSort.ID
    descending: bool = False
    #: Start after this row (the previous page's ``CasePage.next``); same sort and direction.
    after: Cursor | None = None
    #: Historical keyset paging: cases with an id greater than this (``sort`` ``ID`` only).
    after_id: int | None = None
    limit: int = 50

    def wanted_states(self) -> frozenset[CaseState]:
        return self.states | {self.state} if self.state is not None else self.states

    def text_id(self) -> int | None:
        """The search text as a case id, when it can be one."""
        text = self.text
        if text is None or not text.isascii() or not text.isdigit() or len(text) > 18:
            return None
        return int(text)

    def start(self) -> Cursor | None:
        """Where the list starts: ``after``, or ``after_id`` as an id cursor."""
        if self.after is not None:
            return self.after
        if self.after_id is not None:
            return Cursor(CaseSort.ID, False, None, self.after_id)
        return None


@dataclass(frozen=True)
class QueueRow:
    """A case as the queue shows it."""

    case: Case
    #: The pending timer: its ``due_at`` is the next deadline.
    deadline: Timer | None
    waits_for: Party | None

    def overdue(self, now: datetime) -> bool:
        return self.deadline is not None and self.deadline.due_at <= now


@dataclass(frozen=True)
class CasePage:
    rows: list[QueueRow]
    #: Pass back as ``CaseQuery.after`` for the next page; None on the last page.
    next: Cursor | None
    #: The instant "overdue" was measured from.
    as_of: datetime


def sort_key(query: CaseQuery, case: Case, deadline: Timer | None) -> datetime | None:
    """The row's ``Cursor.key`` under the query's sort."""
    if query.sort is CaseSort.DEADLINE:
        return deadline.due_at if deadline is not None else None
    if query.sort is CaseSort.AGE:
        return case.created_at
    return None


@dataclass(frozen=True)
class Period:
    """Cases submitted at or after ``start`` and before ``end``."""

    start: datetime
    end: datetime


@dataclass(frozen=True)
class MerchantFigures:
    """How a merchant served the cases submitted to it in a period."""

    merchant_id: str
    cases: int
    #: Cases whose review ended (approved, rejected, or a timeout acted), and the median time
    #: from submission to that end, in seconds (None when none did).
    reviewed: int
    median_review_seconds: float | None
    #: Cases where a deadline waiting for the merchant fired (``MERCHANT_TIMEOUTS``).
    timed_out: int
    #: Cases that were ever disputed.
    disputed: int
    #: Per-case figures as fractions of ``cases``.
    timeout_share: float = field(init=False)
    dispute_rate: float = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "timeout_share", self.timed_out / self.cases if self.cases else 0)
        object.__setattr__(self, "dispute_rate", self.disputed / self.cases if self.cases else 0)


#: Triggers that end a merchant's review of a submitted case (the timeouts' included);
#: a buyer's cancel or revise ends none.
REVIEW_TRIGGERS: frozenset[str] = frozenset(
    {"approve", "reject", "auto_approve", "escalate", "force_close", "force_refund"}
)


def visible_to(query: CaseQuery, actor: Actor | None) -> CaseQuery:
    """The query narrowed to the cases the actor may see."""
    if actor is None or actor.role in (Role.ADMIN, Role.SYSTEM):
        return query
    if actor.role is Role.BUYER:
        if query.buyer_id not in (None, actor.id):
            raise Forbidden("a buyer lists only its own cases")
        return replace(query, buyer_id=actor.id)
    if actor.role is Role.MERCHANT:
        if query.merchant_id not in (None, actor.id):
            raise Forbidden("a merchant lists only its own cases")
        return replace(query, merchant_id=actor.id)
    raise Forbidden(f"a {actor.role.value} does not list cases")


def check_query(query: CaseQuery) -> CaseQuery:
    """The query, once its page size, paging and window are ones the stores can answer."""
    if not 1 <= query.limit <= MAX_PAGE:
        raise InvalidInput(f"a page holds 1 to {MAX_PAGE} cases", "limit")
    if query.after_id is not None and (query.sort is not CaseSort.ID or query.descending):
        raise InvalidInput("after (a case id) pages only the sort by id; use the cursor", "after")
    start = query.start()
    if start is not None and (start.sort, start.descending) != (query.sort, query.descending):
        raise InvalidInput("the cursor belongs to another sort order; start again", "cursor")
    if query.due_within is not None and query.due_within < timedelta(0):
        raise InvalidInput("must not be negative", "deadline_within_hours")
    return query


#: The longest period the merchants' figures are computed over: they read every case of it.
MAX_FIGURES_PERIOD = timedelta(days=366)


def figures_scope(
    start: datetime, end: datetime, actor: Actor | None, merchant_id: str | None
) -> tuple[Period, str | None]:
    """The period and merchant the figures are for: any merchant's for an admin, its own for a
    merchant; a period of at most ``MAX_FIGURES_PERIOD`` that ends after it starts."""
    start, end = ensure_utc(start), ensure_utc(end)
    if end <= start:
        raise InvalidInput("the period must end after it starts", "to")
    if end - start > MAX_FIGURES_PERIOD:
        raise InvalidInput(f"a period spans at most {MAX_FIGURES_PERIOD.days} days", "from")
    if actor is not None and actor.role is Role.MERCHANT:
        if merchant_id not in (None, actor.id):
            raise Forbidden("a merchant sees only its own figures")
        merchant_id = actor.id
    elif actor is not None and actor.role not in (Role.ADMIN, Role.SYSTEM):
        raise Forbidden("the service figures are for admins and merchants")
    return Period(start, end), merchant_id
