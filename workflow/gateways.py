"""The remote services a side effect calls (carrier, payment gateway, shipper, notifier): their
ports, answers and errors. ``adapters/`` implements them; ``workflow.effects`` calls them."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Protocol

from workflow.model import RefundRoute
from workflow.payloads import BankAccount

# == what the remotes answer =======================================================================


class GatewayError(Exception):
    """A remote call did not do what was asked."""


class GatewayUnavailable(GatewayError):
    """No answer (timeout, connection refused, 5xx): the outcome is unknown; the remote may or
    may not have acted. Retry later with the same idempotency key."""


class GatewayRejected(GatewayError):
    """The remote refused the request definitely; the same request will be refused again."""


@dataclass(frozen=True)
class PickupInfo:
    """A booked courier pickup, shown to the buyer (``case.details['pickup']``)."""

    carrier: str
    pickup_code: str
    window: str
    address: str

    def as_data(self) -> dict[str, str]:
        """The ``book_pickup`` trigger's data (``payloads.PickupBooked``)."""
        return {
            "carrier": self.carrier,
            "pickup_code": self.pickup_code,
            "window": self.window,
            "address": self.address,
        }


class RefundStatus(StrEnum):
    SUCCEEDED = "succeeded"
    FAILED = "failed"


@dataclass(frozen=True)
class RefundOutcome:
    """A payment gateway's definite answer to a refund; an unknown one is ``GatewayUnavailable``."""

    status: RefundStatus
    reference: str | None = None
    error: str | None = None

    @property
    def succeeded(self) -> bool:
        return self.status is RefundStatus.SUCCEEDED


@dataclass(frozen=True)
class Shipment:
    """An outbound parcel booked with a carrier: the replacement or the repaired goods."""

    carrier: str
    tracking_no: str


# == ports =========================================================================================


class PickupBooker(Protocol):
    def book(self, case_id: int, order_id: str, key: str) -> PickupInfo:
        """Book a courier pickup of the return parcel. The same ``key`` returns the same booking.

        Raises ``GatewayUnavailable`` (retry) or ``GatewayRejected`` (no pickup possible)."""
        ...


class PaymentGateway(Protocol):
    def refund(
        self,
        key: str,
        case_id: int,
        amount_fen: int,
        channel: str,
        route: RefundRoute,
        bank_account: BankAccount | None,
    ) -> RefundOutcome:
        """Refund ``amount_fen`` to the original ``channel`` or by bank transfer.

        The same ``key`` never pays twice: a repeat returns the first call's stored result, even
        when that call's answer was lost. Raises ``GatewayUnavailable`` when the outcome is
        unknown (timeouts)."""
        ...


class Shipper(Protocol):
    def ship(self, case_id: int, order_id: str, skus: Sequence[str], key: str) -> Shipment:
        """Book the outbound parcel to the buyer; the same ``key`` returns the same shipment."""
        ...


@dataclass(frozen=True)
class Delivery:
    """One message for one recipient; the notifier delivers each ``key`` at most once."""

    recipient: str
    topic: str
    message: str
    key: str


class Notifier(Protocol):
    def send(self, recipient: str, topic: str, message: str, key: str) -> None:
        """Deliver ``message`` to ``recipient`` (``buyer:ID``, ``merchant:ID`` or ``admins``);
        a repeated ``key`` is not delivered again."""
        ...

    def send_many(self, deliveries: Sequence[Delivery]) -> None:
        """Deliver them all in one call (a push service's batch endpoint). On
        ``GatewayUnavailable`` any part may have been delivered: retry all, with the same keys."""
        ...
