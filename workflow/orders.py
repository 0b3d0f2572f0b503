"""Orders of record: what was ordered and paid, imported from the order system (RULES.md C).

An application names an order; the case's facts (payment, prices, categories, delivery time,
merchant, gifts) are copied from the order of record, never taken from the buyer. What was paid
and ordered never changes after import; the delivery time may be recorded later.

The account of an order (``account``) is computed from the order and its cases: per line the
units under open cases and the units and fen refunded, per order what was paid, refunded and
what is left to refund. Submissions check it under the order's lock (``OrderStore.lock``).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from config.policy import Policy
from workflow.clock import ensure_utc
from workflow.errors import InvalidInput, NotFound, Phrase, PolicyRefusal
from workflow.model import Case, Gift, Item, Payment
from workflow.payloads import (
    MAX_FEN,
    Application,
    Fen,
    Ident,
    Instant,
    PaymentIn,
    aware,
    describe_validation_error,
)
from workflow.states import TERMINAL_STATES, CaseState, CaseType

#: Most lines (and, apart, most gifts) one order may have.
MAX_ORDER_LINES = 500
Quantity = Annotated[int, Field(ge=1, le=10_000, strict=True)]
#: Ended cases that refunded nothing: their units are free again.
NOT_REFUNDED = frozenset(
    {CaseState.CANCELLED, CaseState.CLOSED, CaseState.EXCHANGED, CaseState.REPAIRED}
)


@dataclass(frozen=True)
class OrderLine:
    sku: str
    quantity: int
    #: Paid price of one unit, in fen.
    unit_price: int
    category: str

    @property
    def total(self) -> int:
        return self.quantity * self.unit_price


@dataclass(frozen=True)
class OrderGift:
    sku: str
    quantity: int
    #: Value of one unit as the merchant declared it on the order, in fen.
    value: int


@dataclass(frozen=True)
class Order:
    """One order of record. Times are aware UTC; money is integer fen."""

    order_id: str
    buyer_id: str
    merchant_id: str
    payment: Payment
    lines: tuple[OrderLine, ...]
    gifts: tuple[OrderGift, ...] = ()
    #: None until the goods were delivered (签收).
    delivered_at: datetime | None = None
    #: Built by migration 0007 from an existing case's snapshot, not imported.
    migrated: bool = False

    def line(self, sku: str) -> OrderLine | None:
        for line in self.lines:
            if line.sku == sku:
                return line
        return None

    def to_document(self) -> dict[str, Any]:
        """The order as the import reads it (JSON-ready)."""
        return {
            "order_id": self.order_id,
            "buyer_id": self.buyer_id,
            "merchant_id": self.merchant_id,
            "payment": {
                "channel": self.payment.channel,
                "amount": self.payment.amount,
                "paid_at": self.payment.paid_at.isoformat(),
            },
            "delivered_at": self.delivered_at.isoformat() if self.delivered_at else None,
            "lines": [
                {
                    "sku": line.sku,
                    "quantity": line.quantity,
                    "unit_price": line.unit_price,
                    "category": line.category,
                }
                for line in self.lines
            ],
            "gifts": [
                {"sku": gift.sku, "quantity": gift.quantity, "value": gift.value}
                for gift in self.gifts
            ],
        }


# -- import ------------------------------------------------------------------------------------
class _Input(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)


class OrderLineIn(_Input):
    sku: Ident
    quantity: Quantity
    unit_price: Fen
    category: Ident


class OrderGiftIn(_Input):
    sku: Ident
    quantity: Quantity = 1
    value: Fen = 0


class OrderIn(_Input):
    """An order document as the order system sends it."""

    order_id: Ident
    buyer_id: Ident
    merchant_id: Ident
    payment: PaymentIn
    delivered_at: Instant | None = None
    lines: list[OrderLineIn] = Field(min_length=1, max_length=MAX_ORDER_LINES)
    gifts: list[OrderGiftIn] = Field(default_factory=list, max_length=MAX_ORDER_LINES)

    @field_validator("delivered_at")
    @classmethod
    def _delivered_aware(cls, value: datetime | None) -> datetime | None:
        return None if value is None else aware(value)

    @field_validator("lines", "gifts")
    @classmethod
    def _unique_skus(cls, entries: list[Any]) -> list[Any]:
        skus = [entry.sku for entry in entries]
        duplicated = sorted({sku for sku in skus if skus.count(sku) > 1})
        if duplicated:
            raise ValueError(f"sku listed twice: {', '.join(duplicated)}")
        return entries


def parse_order(document: Any, policy: Policy) -> Order:
    """Validate an imported order document; ``InvalidInput`` names the field at fault.

    Categories must be among the policy's known ones (no silent default)."""
    if not isinstance(document, dict):
        raise InvalidInput("an order is a JSON object")
    try:
        raw = OrderIn.model_validate(document)
    except ValidationError as error:
        raise describe_validation_error(error) from None
    for index, line in enumerate(raw.lines):
        if line.category not in policy.categories:
            known = ", ".join(policy.categories)
            raise InvalidInput(
                f"unknown category {line.category!r} (one of {known})", f"lines.{index}.category"
            )
    if sum(line.quantity * line.unit_price for line in raw.lines) > MAX_FEN:
        raise InvalidInput(f"the lines add up to more than {MAX_FEN} fen", "lines")
    return Order(
        order_id=raw.order_id,
        buyer_id=raw.buyer_id,
        merchant_id=raw.merchant_id,
        payment=Payment(raw.payment.channel, raw.payment.amount, ensure_utc(raw.payment.paid_at)),
        lines=tuple(
            OrderLine(line.sku, line.quantity, line.unit_price, line.category) for line in raw.lines
        ),
        gifts=tuple(OrderGift(gift.sku, gift.quantity, gift.value) for gift in raw.gifts),
        delivered_at=ensure_utc(raw.delivered_at) if raw.delivered_at else None,
    )


def merge_import(stored: Order | None, incoming: Order) -> Order | None:
    """What an import of ``incoming`` stores: the order when new, the stored order with its
    delivery time set when that is all that changed, None when nothing changed.

    ``InvalidInput`` naming the field when the import would change what was paid or ordered,
    or move a delivery time already recorded."""
    if stored is None:
        return incoming
    facts = (
        ("buyer_id", stored.buyer_id, incoming.buyer_id),
        ("merchant_id", stored.merchant_id, incoming.merchant_id),
        ("payment", stored.payment, incoming.payment),
        ("lines", stored.lines, incoming.lines),
        ("gifts", stored.gifts, incoming.gifts),
    )
    for name, was, now in facts:
        if was != now:
            raise InvalidInput(
                f"order {stored.order_id} was imported with other {name}: what was paid "
                "and ordered never changes after import",
                name,
            )
    if incoming.delivered_at == stored.delivered_at or incoming.delivered_at is None:
        return None
    if stored.delivered_at is not None:
        raise InvalidInput(
            Phrase(
                f"order {stored.order_id} was delivered at ",
                stored.delivered_at,
                "; a recorded delivery time does not move",
            ),
            "delivered_at",
        )
    return Order(**{**stored.__dict__, "delivered_at": incoming.delivered_at})


# -- the account -------------------------------------------------------------------------------
@dataclass(frozen=True)
class LineAccount:
    sku: str
    category: str
    quantity: int
    unit_price: int
    #: Units under cases still open.
    open_quantity: int
    #: Units refunded by ended cases (for a return: the units that came back).
    refunded_quantity: int
    refunded_amount: int
    #: Ids of the open cases that hold units of the line.
    open_cases: tuple[int, ...] = ()

    @property
    def total(self) -> int:
        return self.quantity * self.unit_price

    @property
    def claimable(self) -> int:
        """Units a new case may still name."""
        return max(self.quantity - self.open_quantity - self.refunded_quantity, 0)


@dataclass(frozen=True)
class OrderAccount:
    order: Order
    lines: tuple[LineAccount, ...]
    #: Fen refunded by ended cases.
    refunded: int
    #: Fen open cases may still refund (their current refund amounts).
    pending: int

    @property
    def paid(self) -> int:
        return self.order.payment.amount

    @property
    def refundable(self) -> int:
        """What a new case may still refund: paid less refunded and pending."""
        return max(self.paid - self.refunded - self.pending, 0)

    def line(self, sku: str) -> LineAccount | None:
        for line in self.lines:
            if line.sku == sku:
                return line
        return None


def received_quantities(case: Case) -> dict[str, int]:
    """Units per sku the case's refund is for: for a return, those the merchant recorded as
    received (``details['received']``), else the announced quantities."""
    announced = {item.sku: item.quantity for item in case.items}
    received: Mapping[str, int] | None = case.details.get("received")
    if case.type is CaseType.REFUND_ONLY or received is None:
        return announced
    return {sku: min(int(received.get(sku, 0)), quantity) for sku, quantity in announced.items()}


def refund_by_sku(case: Case, amount: int) -> dict[str, int]:
    """``amount`` spread over the case's lines in order, each up to its received units' price."""
    received = received_quantities(case)
    spread: dict[str, int] = {}
    left = amount
    for item in case.items:
        share = min(left, received.get(item.sku, 0) * item.unit_price)
        spread[item.sku] = share
        left -= share
    return spread


def account(order: Order, cases: Iterable[Case]) -> OrderAccount:
    """The order's per-line and per-order account from its cases (any state)."""
    open_units: dict[str, int] = {}
    holders: dict[str, list[int]] = {}
    refunded_units: dict[str, int] = {}
    refunded_fen: dict[str, int] = {}
    refunded = pending = 0
    for case in cases:
        if case.state in NOT_REFUNDED:
            continue
        if case.state not in TERMINAL_STATES:
            for item in case.items:
                open_units[item.sku] = open_units.get(item.sku, 0) + item.quantity
                holders.setdefault(item.sku, []).append(case.id or 0)
            pending += case.refund_amount
            continue
        # Refunded: its money went out, for the units it was refunded for.
        refunded += case.refund_amount
        for sku, units in received_quantities(case).items():
            refunded_units[sku] = refunded_units.get(sku, 0) + units
        for sku, fen in refund_by_sku(case, case.refund_amount).items():
            refunded_fen[sku] = refunded_fen.get(sku, 0) + fen
    lines = tuple(
        LineAccount(
            sku=line.sku,
            category=line.category,
            quantity=line.quantity,
            unit_price=line.unit_price,
            open_quantity=open_units.get(line.sku, 0),
            refunded_quantity=refunded_units.get(line.sku, 0),
            refunded_amount=refunded_fen.get(line.sku, 0),
            open_cases=tuple(sorted(holders.get(line.sku, []))),
        )
        for line in order.lines
    )
    return OrderAccount(order, lines, refunded, pending)


# -- applications --------------------------------------------------------------------------------
def no_order(order_id: str, buyer_id: str) -> NotFound:
    """The one answer for an order that does not exist and for someone else's order: nothing
    tells the asker which (nor anything of the order's cases)."""
    return NotFound(
        f"no order of record {order_id} for buyer {buyer_id}: an application names an order "
        "the order system imported (aftersales orders import)"
    )


def owned_order(order: Order | None, order_id: str, buyer_id: str) -> Order:
    if order is None or order.buyer_id != buyer_id:
        raise no_order(order_id, buyer_id)
    return order


def lines_applied_for(order: Order, app: Application) -> list[OrderLine]:
    """The order's lines the application names, in its order, after checking every fact it
    states against the order of record (``InvalidInput`` naming the first that disagrees).

    A case's items share one category (eligibility and warranty are per category)."""
    lines = []
    for index, item in enumerate(app.items):
        line = order.line(item.sku)
        if line is None:
            raise InvalidInput(
                f"order {order.order_id} has no line {item.sku}", f"items.{index}.sku"
            )
        if item.unit_price is not None and item.unit_price != line.unit_price:
            raise InvalidInput(
                f"{item.sku} was paid {line.unit_price} fen a unit on order {order.order_id}",
                f"items.{index}.unit_price",
            )
        lines.append(line)
    categories = sorted({line.category for line in lines})
    if len(categories) > 1:
        raise InvalidInput(
            f"the items are of categories {', '.join(categories)}: apply for each apart",
            "items",
        )
    _check_stated(order, app, lines[0].category)
    return lines


def _check_stated(order: Order, app: Application, category: str) -> None:
    stated = app.model_fields_set

    def differs(name: str, *detail: str | datetime) -> InvalidInput:
        return InvalidInput(
            Phrase(
                *detail,
                f" on the order of record {order.order_id}: leave it out, the order supplies it",
            ),
            name,
        )

    if app.merchant_id is not None and app.merchant_id != order.merchant_id:
        raise differs("merchant_id", f"the merchant is {order.merchant_id}")
    if app.category is not None and app.category != category:
        raise differs("category", f"the items' category is {category}")
    if app.payment is not None:
        paid = order.payment
        for name, was, now in (
            ("channel", paid.channel, app.payment.channel),
            ("amount", paid.amount, app.payment.amount),
            ("paid_at", paid.paid_at, ensure_utc(app.payment.paid_at)),
        ):
            if was != now:
                shown = was if isinstance(was, datetime) else str(was)
                raise differs(f"payment.{name}", f"payment.{name} is ", shown)
    if "delivered_at" in stated:
        delivered = ensure_utc(app.delivered_at) if app.delivered_at else None
        if delivered != order.delivered_at:
            if order.delivered_at is None:
                raise differs("delivered_at", "delivered_at is not delivered")
            raise differs("delivered_at", "delivered_at is ", order.delivered_at)
    for index, gift in enumerate(app.gifts or []):
        known = next((g for g in order.gifts if g.sku == gift.sku), None)
        if known is None:
            raise differs(f"gifts.{index}.sku", f"there is no gift {gift.sku}")
        if gift.value != known.value:
            raise differs(f"gifts.{index}.value", f"{gift.sku} is declared {known.value} fen")
        if gift.quantity > known.quantity:
            raise differs(f"gifts.{index}.quantity", f"{known.quantity} {gift.sku} came")


def case_gifts(order: Order, app: Application) -> list[Gift]:
    """The gifts to come back with the case: those the application names (checked against the
    order), else all the order's gifts, with the values the merchant declared."""
    if app.gifts is None:
        return [Gift(g.sku, g.quantity, g.value) for g in order.gifts]
    return [Gift(g.sku, g.quantity, g.value) for g in app.gifts]


def claim(account: OrderAccount, app: Application) -> int:
    """Check the application's units against the account and return the new case's refund
    base: its items' price (or the partial amount asked for) within what the order has left.

    Per line, open + refunded units never exceed the ordered units; all refunds never exceed
    what was paid. Call under the order's lock, with the account of all its cases."""
    order_id = account.order.order_id
    items_amount = 0
    for index, item in enumerate(app.items):
        line = account.line(item.sku)
        assert line is not None, "lines_applied_for checked the skus"
        if item.quantity > line.claimable:
            held = ", ".join(f"case {case_id}" for case_id in line.open_cases)
            raise PolicyRefusal(
                # Open cases hold the units (RULES.md B: one open case per unit), or they
                # were refunded or never ordered.
                "one_open_case_per_item" if line.open_cases else "order_line_quantity",
                f"order {order_id} line {item.sku}: {line.quantity} ordered, "
                f"{line.open_quantity} under open cases{f' ({held})' if held else ''}, "
                f"{line.refunded_quantity} refunded; {line.claimable} left to apply for, "
                f"not {item.quantity} (items.{index})",
            )
        items_amount += item.quantity * line.unit_price
    if app.requested_amount is not None and app.requested_amount > items_amount:
        raise InvalidInput(
            f"asks {app.requested_amount} fen but the items were paid {items_amount} fen",
            "requested_amount",
        )
    wanted = items_amount if app.requested_amount is None else app.requested_amount
    left = account.refundable
    if app.type is not CaseType.REPAIR and left <= 0:
        raise PolicyRefusal(
            "order_refund_cap",
            f"order {order_id} paid {account.paid} fen and "
            f"{account.refunded + account.pending} fen are already refunded or claimed",
        )
    return max(0, min(wanted, left))


def case_from_order(
    app: Application,
    order: Order,
    lines: Sequence[OrderLine],
    base: int,
    cap: int,
    now: datetime,
    key: str | None,
) -> Case:
    """The case an application opens: its snapshot copied from the order of record, the
    refund base and cap in its details."""
    return Case(
        type=app.type,
        state=CaseState.SUBMITTED,
        order_id=order.order_id,
        buyer_id=order.buyer_id,
        merchant_id=order.merchant_id,
        category=lines[0].category,
        reason=app.reason,
        description=app.description,
        payment=order.payment,
        delivered_at=order.delivered_at,
        items=[
            Item(item.sku, item.quantity, line.unit_price)
            for item, line in zip(app.items, lines, strict=True)
        ],
        gifts=case_gifts(order, app),
        created_at=now,
        updated_at=now,
        requested_amount=app.requested_amount,
        refund_amount=base,
        submission_key=key,
        details={"refund_base": base, "refund_cap": max(cap, 0)},
    )
