"""In-process fakes of the remotes: carrier, payment gateway, shipper, notification service.

Each call sleeps a latency, then acts or fails as drawn from a seeded random generator
(``config.settings.FakeBehaviour``) or as scripted call by call with ``script(...)``. The payment
gateway's ledger (``fake_gateway_payments``) and the notifier's deliveries
(``fake_notifications``) are SQL tables of their own, outside our migrations, committed before
the call returns as a remote's would be; like real gateways the fakes honour idempotency keys.
docs/side-effects.md ("The fakes") has the details.
"""

from __future__ import annotations

import hashlib
import random
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Literal
from zoneinfo import ZoneInfo

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError, OperationalError, ProgrammingError
from sqlalchemy.schema import CreateIndex, CreateTable

from config.settings import FakeBehaviour, FakeGatewaySettings
from persistence.db import make_engine
from workflow.clock import Clock, SystemClock
from workflow.gateways import (
    Delivery,
    GatewayRejected,
    GatewayUnavailable,
    PickupInfo,
    RefundOutcome,
    RefundStatus,
    Shipment,
)
from workflow.model import RefundRoute
from workflow.payloads import BankAccount

#: ``ok``: the remote acts and answers. ``fail``: a definite failure (the payment gateway declines
#: and stores it under the key; carrier and notifier are unavailable). ``reject``: carrier and
#: shipper refuse (``GatewayRejected``). ``timeout_before``: ``GatewayUnavailable`` before the
#: remote acted; ``timeout_after``: the remote acted (paid, booked, sent), the answer was lost.
Behaviour = Literal["ok", "fail", "reject", "timeout_before", "timeout_after"]
BEHAVIOURS: frozenset[str] = frozenset({"ok", "fail", "reject", "timeout_before", "timeout_after"})

#: The fakes' own tables; not part of ``persistence.tables.metadata`` nor of the migrations.
ledger_metadata = sa.MetaData()

fake_gateway_payments = sa.Table(
    "fake_gateway_payments",
    ledger_metadata,
    sa.Column("idempotency_key", sa.String(200), primary_key=True),
    sa.Column("case_id", sa.BigInteger(), nullable=False),
    sa.Column("amount", sa.BigInteger(), nullable=False),
    sa.Column("channel", sa.String(64), nullable=False),
    sa.Column("route", sa.String(32), nullable=False),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("reference", sa.String(64), nullable=True),
    sa.Column("error", sa.Text(), nullable=True),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    sa.Index("ix_fake_gateway_payments_case_id", "case_id"),
)

fake_notifications = sa.Table(
    "fake_notifications",
    ledger_metadata,
    sa.Column("key", sa.String(200), primary_key=True),
    sa.Column("recipient", sa.String(200), nullable=False),
    sa.Column("topic", sa.String(64), nullable=False),
    sa.Column("message", sa.Text(), nullable=False),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    sa.Index("ix_fake_notifications_recipient", "recipient"),
)

_SHANGHAI = ZoneInfo("Asia/Shanghai")
CARRIER_NAME = "FAKE-EXPRESS"


class _FakeRemote:
    """Latency, seeded failures and scripted behaviours shared by the fakes."""

    name = "remote"

    def __init__(
        self,
        behaviour: FakeBehaviour | None = None,
        seed: int = 0,
        clock: Clock | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.behaviour = behaviour or FakeBehaviour()
        self.clock: Clock = clock or SystemClock()
        self._sleep = sleep
        self._rng = random.Random(f"{seed}:{self.name}")
        self._script: deque[Behaviour] = deque()
        self._lock = threading.Lock()
        #: Calls received by this instance (whatever their outcome).
        self.calls = 0

    def script(self, *behaviours: Behaviour) -> None:
        """The next calls behave like this, in order, before the random draws resume."""
        unknown = [b for b in behaviours if b not in BEHAVIOURS]
        if unknown:
            raise ValueError(f"unknown behaviours {unknown}; one of {sorted(BEHAVIOURS)}")
        with self._lock:
            self._script.extend(behaviours)

    def _call(self) -> Behaviour:
        """Simulate the remote call's latency and draw what happens to it."""
        if self.behaviour.latency_ms > 0:
            self._sleep(self.behaviour.latency_ms / 1000)
        with self._lock:
            self.calls += 1
            if self._script:
                return self._script.popleft()
            draw = self._rng.random()
            if draw < self.behaviour.timeout_rate:
                return "timeout_before" if self._rng.random() < 0.5 else "timeout_after"
            if draw < self.behaviour.timeout_rate + self.behaviour.failure_rate:
                return "fail"
            return "ok"

    def _timeout(self, what: str) -> GatewayUnavailable:
        return GatewayUnavailable(f"{self.name} timed out ({what})")

    def _booking_call(self, what: str, refusal: str) -> Behaviour:
        """A booking call up to the point where something is recorded: unavailable and refused
        calls record nothing; the caller records, then honours ``timeout_after``."""
        behaviour = self._call()
        if behaviour in ("fail", "timeout_before"):
            raise GatewayUnavailable(f"{self.name} unavailable ({what})")
        if behaviour == "reject":
            raise GatewayRejected(refusal)
        return behaviour


def _digest(key: str, length: int) -> str:
    return hashlib.sha256(key.encode()).hexdigest()[:length].upper()


# == carrier and shipper: bookings kept in memory, codes derived from the key ======================


class FakeCarrier(_FakeRemote):
    """Books courier pickups. The pickup code derives from the key, so the same key gives the
    same booking in any process; ``bookings`` holds what this instance booked."""

    name = "carrier"

    def __init__(
        self,
        behaviour: FakeBehaviour | None = None,
        seed: int = 0,
        clock: Clock | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        super().__init__(behaviour, seed, clock, sleep)
        self.bookings: dict[str, PickupInfo] = {}

    def book(self, case_id: int, order_id: str, key: str) -> PickupInfo:
        behaviour = self._booking_call(
            f"pickup {key}", f"carrier serves no pickup for order {order_id}"
        )
        with self._lock:
            info = self.bookings.get(key)
            if info is None:
                day = (self.clock.now().astimezone(_SHANGHAI) + timedelta(days=1)).date()
                info = PickupInfo(
                    carrier=CARRIER_NAME,
                    pickup_code=f"PK{_digest(key, 10)}",
                    window=f"{day.isoformat()} 09:00-12:00",
                    address=f"the delivery address of order {order_id}",
                )
                self.bookings[key] = info
        if behaviour == "timeout_after":
            raise self._timeout(f"pickup {key} booked, answer lost")
        return info


class FakeShipper(_FakeRemote):
    """Books outbound parcels (replacements, repaired goods); same key, same tracking number."""

    name = "shipper"

    def __init__(
        self,
        behaviour: FakeBehaviour | None = None,
        seed: int = 0,
        clock: Clock | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        super().__init__(behaviour, seed, clock, sleep)
        self.shipments: dict[str, Shipment] = {}

    def ship(self, case_id: int, order_id: str, skus: Sequence[str], key: str) -> Shipment:
        behaviour = self._booking_call(f"shipment {key}", f"shipper cannot ship order {order_id}")
        with self._lock:
            shipment = self.shipments.get(key)
            if shipment is None:
                shipment = Shipment(CARRIER_NAME, f"FX{_digest(key, 12)}")
                self.shipments[key] = shipment
        if behaviour == "timeout_after":
            raise self._timeout(f"shipment {key} booked, answer lost")
        return shipment


# == payment gateway and notifier: their own tables ================================================


def ensure_ledger_tables(engine: Engine) -> None:
    """Create the fakes' tables if they are missing (safe when several processes race)."""
    for table in ledger_metadata.sorted_tables:
        statements: list[sa.ExecutableDDLElement] = [CreateTable(table, if_not_exists=True)]
        statements += [CreateIndex(index, if_not_exists=True) for index in table.indexes]
        for statement in statements:
            try:
                with engine.begin() as connection:
                    connection.execute(statement)
            except (IntegrityError, ProgrammingError, OperationalError):
                # PostgreSQL's IF NOT EXISTS can still collide with a concurrent CREATE.
                if not sa.inspect(engine).has_table(table.name):
                    raise


class _SqlRemote(_FakeRemote):
    def __init__(
        self,
        url: str,
        behaviour: FakeBehaviour | None = None,
        seed: int = 0,
        clock: Clock | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        super().__init__(behaviour, seed, clock, sleep)
        self.url = url
        self.engine = make_engine(url)
        ensure_ledger_tables(self.engine)

    def _insert_once(
        self, table: sa.Table, key_column: sa.Column[Any], values: dict[str, Any]
    ) -> tuple[sa.Row[Any], bool]:
        """The row stored under the key: inserted now (True) or by an earlier call (False).

        One short transaction of its own, committed before returning. Two calls racing with
        one key: the primary key lets one insert; the other reads the winner's row."""
        key = values[key_column.name]
        select = sa.select(table).where(key_column == key)
        for _ in range(3):
            try:
                with self.engine.begin() as connection:
                    row = connection.execute(select).first()
                    if row is not None:
                        return row, False
                    connection.execute(sa.insert(table).values(**values))
                    inserted = connection.execute(select).one()
                return inserted, True
            except IntegrityError:
                continue
        raise GatewayUnavailable(f"{self.name} ledger contention on {key}")


@dataclass(frozen=True)
class LedgerEntry:
    idempotency_key: str
    case_id: int
    amount: int
    channel: str
    route: str
    status: RefundStatus
    reference: str | None
    error: str | None
    created_at: datetime


class FakePaymentGateway(_SqlRemote):
    """Refunds recorded in ``fake_gateway_payments``, one row per idempotency key."""

    name = "payment gateway"

    def refund(
        self,
        key: str,
        case_id: int,
        amount_fen: int,
        channel: str,
        route: RefundRoute,
        bank_account: BankAccount | None,
    ) -> RefundOutcome:
        behaviour = self._call()
        if behaviour == "timeout_before":
            raise self._timeout(f"refund {key} not received")
        if amount_fen <= 0:
            # Refused before anything is stored, as a gateway validates its input first.
            return RefundOutcome(RefundStatus.FAILED, None, f"amount {amount_fen} is not positive")
        if route is RefundRoute.BANK_TRANSFER and bank_account is None:
            failed: RefundStatus | None = RefundStatus.FAILED
            error: str | None = "bank transfer without bank account details"
        elif behaviour in ("fail", "reject"):
            failed, error = RefundStatus.FAILED, f"declined by {channel} (simulated)"
        else:
            failed, error = None, None
        row, _ = self._insert_once(
            fake_gateway_payments,
            fake_gateway_payments.c.idempotency_key,
            {
                "idempotency_key": key,
                "case_id": case_id,
                "amount": amount_fen,
                "channel": channel,
                "route": str(route),
                "status": str(failed or RefundStatus.SUCCEEDED),
                "reference": None if failed else f"FP{_digest(key, 16)}",
                "error": error,
                "created_at": self.clock.now(),
            },
        )
        if behaviour == "timeout_after":
            raise self._timeout(f"refund {key} recorded, answer lost")
        return RefundOutcome(RefundStatus(row.status), row.reference, row.error)

    def ledger(self, case_id: int | None = None) -> list[LedgerEntry]:
        """Every stored refund (succeeded and failed), oldest first."""
        table = fake_gateway_payments
        query = sa.select(table).order_by(table.c.created_at, table.c.idempotency_key)
        if case_id is not None:
            query = query.where(table.c.case_id == case_id)
        with self.engine.connect() as connection:
            rows = connection.execute(query).all()
        return [
            LedgerEntry(
                row.idempotency_key,
                row.case_id,
                row.amount,
                row.channel,
                row.route,
                RefundStatus(row.status),
                row.reference,
                row.error,
                _utc(row.created_at),
            )
            for row in rows
        ]

    def payments_count(self, case_id: int | None = None) -> int:
        """How many refunds were really paid (status succeeded)."""
        return sum(1 for e in self.ledger(case_id) if e.status is RefundStatus.SUCCEEDED)

    def amount_paid(self, case_id: int | None = None) -> int:
        return sum(e.amount for e in self.ledger(case_id) if e.status is RefundStatus.SUCCEEDED)


@dataclass(frozen=True)
class Notification:
    key: str
    recipient: str
    topic: str
    message: str
    created_at: datetime


class FakeNotifier(_SqlRemote):
    """Deliveries recorded in ``fake_notifications``; a repeated key is not delivered again."""

    name = "notifier"

    def send(self, recipient: str, topic: str, message: str, key: str) -> None:
        self.send_many([Delivery(recipient, topic, message, key)])

    def send_many(self, deliveries: Sequence[Delivery]) -> None:
        """One call for them all: one behaviour drawn, one multi-row insert in one transaction
        (keys delivered before are skipped), as a push service's batch endpoint would."""
        behaviour = self._call()
        what = ", ".join(d.key for d in deliveries[:3]) + (" …" if len(deliveries) > 3 else "")
        if behaviour in ("fail", "reject", "timeout_before"):
            raise GatewayUnavailable(f"notifier unavailable ({what})")
        now = self.clock.now()
        rows = {
            d.key: {
                "key": d.key,
                "recipient": d.recipient,
                "topic": d.topic,
                "message": d.message,
                "created_at": now,
            }
            for d in deliveries
        }
        if rows:
            with self.engine.begin() as connection:
                insert = _insert_new(self.engine, fake_notifications)
                connection.execute(insert, list(rows.values()))
        if behaviour == "timeout_after":
            raise self._timeout(f"{what} delivered, answer lost")

    def sent(self, recipient: str | None = None) -> list[Notification]:
        """Deliveries (to ``recipient``, or all), oldest first."""
        table = fake_notifications
        query = sa.select(table).order_by(table.c.created_at, table.c.key)
        if recipient is not None:
            query = query.where(table.c.recipient == recipient)
        with self.engine.connect() as connection:
            rows = connection.execute(query).all()
        return [
            Notification(row.key, row.recipient, row.topic, row.message, _utc(row.created_at))
            for row in rows
        ]


def _insert_new(engine: Engine, table: sa.Table) -> sa.Insert:
    """INSERT that skips rows whose primary key is stored already (both dialects say it alike)."""
    insert = postgresql.insert if engine.dialect.name == "postgresql" else sqlite.insert
    return insert(table).on_conflict_do_nothing()


def _utc(moment: datetime) -> datetime:
    # SQLite hands back naive datetimes; what we stored was UTC.
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


# == wiring ========================================================================================


@dataclass(frozen=True)
class FakeGateways:
    carrier: FakeCarrier
    payments: FakePaymentGateway
    shipper: FakeShipper
    notifier: FakeNotifier


def build_fake_gateways(
    settings: FakeGatewaySettings,
    database_url: str,
    clock: Clock | None = None,
    sleep: Callable[[float], None] = time.sleep,
) -> FakeGateways:
    """The four fakes as ``settings`` configure them; ledgers in ``settings.ledger_url`` or else
    the service's ``database_url``."""
    url = settings.ledger_url or database_url
    seed = settings.seed
    return FakeGateways(
        carrier=FakeCarrier(settings.carrier, seed, clock, sleep),
        payments=FakePaymentGateway(url, settings.payment, seed, clock, sleep),
        shipper=FakeShipper(settings.shipper, seed, clock, sleep),
        notifier=FakeNotifier(url, settings.notifier, seed, clock, sleep),
    )
