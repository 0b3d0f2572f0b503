"""Input schemas: the application a buyer submits and the data each trigger carries.

They validate input at the edge (extra keys refused, money as non-negative integer fen) so the
domain only ever sees well-formed values.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Annotated, Any

from pydantic import (
    AwareDatetime,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
)

from workflow.errors import InvalidInput
from workflow.states import CaseType

#: The largest amount in fen anything may state (¥10 billion): far above any order, and low enough
#: that sums over the most lines an application may have still fit the databases' BIGINT.
MAX_FEN = 10**12
Fen = Annotated[int, Field(ge=0, le=MAX_FEN, strict=True)]
Ident = Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.:\-]+$")]
Text = Annotated[str, Field(max_length=2000)]


#: Text that is a number: pydantic would read it as seconds since 1970 too (a query string's
#: ``to=0.5`` is text).
_NUMBER_TEXT = re.compile(r"\s*[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?\s*")


def _time_text(value: Any) -> Any:
    # Pydantic would read a number as seconds since 1970: a time is ISO 8601 text, so that a
    # field holding a count or an amount by mistake is refused, not taken for a date.
    if isinstance(value, int | float) or (isinstance(value, str) and _NUMBER_TEXT.fullmatch(value)):
        raise ValueError("a time is ISO 8601 text with an offset, e.g. 2026-11-20T10:00:00+08:00")
    return value


#: A time given as ISO 8601 text (never a number).
Instant = Annotated[datetime, BeforeValidator(_time_text)]
#: The same, with its UTC offset required (query parameters: no model checks them afterwards).
AwareInstant = Annotated[AwareDatetime, BeforeValidator(_time_text)]


class _Input(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)


def aware(value: datetime) -> datetime:
    if value.tzinfo is None:
        raise ValueError("needs a timezone offset, e.g. 2026-11-20T10:00:00+08:00")
    try:
        value.astimezone(UTC)
    except OverflowError:
        raise ValueError("lies outside the years UTC can represent") from None
    return value


class PaymentIn(_Input):
    channel: Ident
    amount: Annotated[int, Field(gt=0, le=MAX_FEN, strict=True)]
    paid_at: Instant

    _paid_at_aware = field_validator("paid_at")(aware)


class ItemIn(_Input):
    sku: Ident
    quantity: Annotated[int, Field(ge=1, le=10_000, strict=True)]
    #: The order of record's price; stating it is allowed when it agrees.
    unit_price: Fen | None = None


class GiftIn(_Input):
    sku: Ident
    quantity: Annotated[int, Field(ge=1, le=10_000, strict=True)] = 1
    value: Fen = 0


class Application(_Input):
    """What a buyer submits (``aftersales case submit``): the order, its lines and quantities,
    the reason and the buyer's account. The facts (payment, prices, categories, delivery time,
    merchant, gifts) come from the order of record; an application may still state them, and is
    refused, naming the field, when they disagree with it (``orders.check_stated``)."""

    type: CaseType
    order_id: Ident
    buyer_id: Ident
    reason: Ident
    items: list[ItemIn] = Field(min_length=1)
    description: Text = ""
    #: A partial refund: less than the items' paid amount.
    requested_amount: Fen | None = None
    # Stated facts, checked against the order of record.
    merchant_id: Ident | None = None
    category: Ident | None = None
    payment: PaymentIn | None = None
    delivered_at: Instant | None = None
    gifts: list[GiftIn] | None = None

    @field_validator("delivered_at")
    @classmethod
    def _delivered_aware(cls, value: datetime | None) -> datetime | None:
        return None if value is None else aware(value)

    @field_validator("items")
    @classmethod
    def _unique_skus(cls, items: list[ItemIn]) -> list[ItemIn]:
        skus = [item.sku for item in items]
        duplicated = sorted({sku for sku in skus if skus.count(sku) > 1})
        if duplicated:
            raise ValueError(f"sku listed twice: {', '.join(duplicated)}")
        return items


class NoData(_Input):
    pass


class Tracking(_Input):
    tracking_no: Ident
    carrier: Ident | None = None


class CarrierEvent(_Input):
    tracking_no: Ident | None = None
    carrier: Ident | None = None
    note: Text | None = None


class PickupBooked(_Input):
    carrier: Ident
    pickup_code: Ident
    window: Text = ""
    address: Text = ""


class ReceivedIn(_Input):
    sku: Ident
    quantity: Annotated[int, Field(ge=0, le=10_000, strict=True)]


class Receipt(_Input):
    """What the merchant's receipt of a return records: the units that came back per line
    (each line not listed: none came back). Omitted: all the announced units."""

    received: list[ReceivedIn] | None = None
    note: Text = ""


class Inspection(Receipt):
    #: Skus of gifts that did not come back; each takes at most its declared value off the refund.
    gifts_missing: list[Ident] = Field(default_factory=list)


class BankAccount(_Input):
    holder: Annotated[str, Field(min_length=1, max_length=100)]
    bank: Annotated[str, Field(min_length=1, max_length=100)]
    account_no: Annotated[str, Field(pattern=r"^[0-9]{8,30}$")]


class RefundResult(_Input):
    reference: Ident | None = None
    error: Text | None = None
    #: False when the gateway's answer is unknown (timeouts): the next attempt then reuses the
    #: same idempotency key, because the first call may have paid.
    definite: bool = True


class Revision(_Input):
    description: Text | None = None
    requested_amount: Fen | None = None


class Deadline(_Input):
    #: Either a new due time or hours to add to the current one.
    until: Instant | None = None
    hours: Annotated[float, Field(gt=0, le=24 * 365)] | None = None

    _until_aware = field_validator("until")(lambda value: None if value is None else aware(value))


#: The data each trigger accepts; any trigger not listed takes none.
TRIGGER_DATA: dict[str, type[_Input]] = {
    "ship_back": Tracking,
    "ship_replacement": Tracking,
    "ship_repaired": Tracking,
    "record_pickup": CarrierEvent,
    "record_return_delivery": CarrierEvent,
    "record_buyer_delivery": CarrierEvent,
    "report_parcel_lost": CarrierEvent,
    "report_parcel_damaged": CarrierEvent,
    "book_pickup": PickupBooked,
    "confirm_receipt": Receipt,
    "inspect": Inspection,
    "provide_bank_account": BankAccount,
    "confirm_refund": RefundResult,
    "fail_refund": RefundResult,
    "revise": Revision,
}


def describe_validation_error(error: ValidationError, prefix: str = "") -> InvalidInput:
    first = error.errors()[0]
    location = ".".join(str(part) for part in first["loc"])
    field = f"{prefix}.{location}" if prefix and location else (prefix or location or None)
    return InvalidInput(first["msg"], field)


def parse_application(raw: Any) -> Application:
    if not isinstance(raw, dict):
        raise InvalidInput("an application is a JSON object")
    try:
        return Application.model_validate(raw)
    except ValidationError as error:
        raise describe_validation_error(error) from None


def parse_trigger_data(trigger: str, raw: dict[str, Any] | None) -> BaseModel:
    schema = TRIGGER_DATA.get(trigger, NoData)
    try:
        return schema.model_validate(raw or {})
    except ValidationError as error:
        raise describe_validation_error(error, "data") from None
