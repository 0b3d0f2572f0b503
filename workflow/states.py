"""The vocabulary of an after-sales case: its types, states and the roles that act on it."""

from __future__ import annotations

from enum import StrEnum


class CaseType(StrEnum):
    """How the buyer wants the problem settled."""

    #: 退货退款: the goods go back to the merchant, the money back to the buyer.
    RETURN_REFUND = "return_refund"
    #: 换货: the goods go back, a replacement comes out.
    EXCHANGE = "exchange"
    #: 维修: warranty repair; the goods go back, come out repaired.
    REPAIR = "repair"
    #: 仅退款: money only, no return leg (not shipped, not received, damaged or missing in transit).
    REFUND_ONLY = "refund_only"


class CaseState(StrEnum):
    """Where a case stands. The main path first, then the side exits."""

    #: The buyer applied; the merchant has not reviewed yet.
    SUBMITTED = "submitted"
    #: The merchant (or the review timer) accepted the application.
    APPROVED = "approved"
    #: A courier pickup is booked; the buyer has the pickup information.
    PICKUP = "pickup"
    #: The return parcel is on its way to the merchant (tracking number known).
    SHIPPED_BACK = "shipped_back"
    #: The carrier delivered the return parcel; the merchant has not confirmed receipt yet.
    RETURN_DELIVERED = "return_delivered"
    #: The merchant has the goods back.
    RECEIVED = "received"
    #: The merchant inspected the goods (or the inspection timer deemed them passed).
    INSPECTED = "inspected"
    #: A refund call to the payment channel is under way.
    REFUNDING = "refunding"
    #: The last refund attempt failed; it is retried with backoff, then parked for an admin.
    REFUND_FAILED = "refund_failed"
    #: The original channel's refund window has passed; waiting for the buyer's bank account.
    AWAITING_BANK_ACCOUNT = "awaiting_bank_account"
    #: A replacement or the repaired goods are on their way to the buyer.
    SHIPPED_TO_BUYER = "shipped_to_buyer"
    #: The carrier delivered the replacement or repaired goods; the buyer has not confirmed yet.
    DELIVERED_TO_BUYER = "delivered_to_buyer"
    #: The merchant refused the application or failed the inspection; the buyer may escalate.
    REJECTED = "rejected"
    #: The platform intervenes (escalated by the buyer, a carrier incident, or a stuck deadline).
    DISPUTED = "disputed"
    #: Outcome: the money is back with the buyer.
    REFUNDED = "refunded"
    #: Outcome: the buyer has the replacement.
    EXCHANGED = "exchanged"
    #: Outcome: the buyer has the repaired goods.
    REPAIRED = "repaired"
    #: The buyer withdrew the application.
    CANCELLED = "cancelled"
    #: Ended without an outcome: timed out, or closed by a ruling or an admin.
    CLOSED = "closed"


TERMINAL_STATES: frozenset[CaseState] = frozenset(
    {
        CaseState.REFUNDED,
        CaseState.EXCHANGED,
        CaseState.REPAIRED,
        CaseState.CANCELLED,
        CaseState.CLOSED,
    }
)

#: States in which the merchant holds the returned goods (a ruling then resumes after inspection).
GOODS_BACK_STATES: frozenset[CaseState] = frozenset({CaseState.RECEIVED, CaseState.INSPECTED})


class Role(StrEnum):
    """Who fires a trigger."""

    BUYER = "buyer"
    MERCHANT = "merchant"
    #: Platform operators; every admin trigger needs a reason.
    ADMIN = "admin"
    #: Timers and workers of the service itself.
    SYSTEM = "system"
    #: Carrier tracking events.
    CARRIER = "carrier"
    #: Payment gateway results.
    PAYMENT = "payment"
