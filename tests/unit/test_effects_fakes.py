"""The fake remotes of ``adapters.fake_gateways`` and their settings (``config.gateways``)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from pydantic import ValidationError

from adapters.fake_gateways import (
    FakeCarrier,
    FakeNotifier,
    FakePaymentGateway,
    FakeShipper,
    build_fake_gateways,
    fake_gateway_payments,
)
from config.settings import FakeBehaviour, FakeGatewaySettings
from persistence.db import dispose_engine, make_engine
from workflow.clock import FakeClock
from workflow.gateways import Delivery, GatewayRejected, GatewayUnavailable, RefundStatus
from workflow.model import RefundRoute
from workflow.payloads import BankAccount

from .builders import NOW

ORIGINAL = RefundRoute.ORIGINAL_CHANNEL
ACCOUNT = BankAccount(holder="Li Lei", bank="ICBC", account_no="6222020200112233")


@pytest.fixture
def ledger_url(tmp_path: Path) -> Iterator[str]:
    url = f"sqlite:///{tmp_path / 'gateway.db'}"
    yield url
    dispose_engine(url)


def gateway(url: str, **behaviour: float) -> FakePaymentGateway:
    return FakePaymentGateway(url, FakeBehaviour(**behaviour), clock=FakeClock(NOW))


def refund(fake: FakePaymentGateway, key: str, amount: int = 100, case_id: int = 1) -> RefundStatus:
    return fake.refund(key, case_id, amount, "wechat_pay", ORIGINAL, None).status


# == payment gateway ===============================================================================


def test_the_same_key_pays_once_and_returns_the_first_result(ledger_url: str) -> None:
    fake = gateway(ledger_url)
    first = fake.refund("k1", 1, 100, "wechat_pay", ORIGINAL, None)
    again = fake.refund("k1", 1, 100, "wechat_pay", ORIGINAL, None)
    assert first == again and first.succeeded and first.reference
    assert fake.payments_count() == 1 and fake.amount_paid(1) == 100
    (row,) = fake.ledger()
    assert (row.idempotency_key, row.case_id, row.channel, row.route) == (
        "k1",
        1,
        "wechat_pay",
        "original_channel",
    )
    assert row.created_at == NOW


def test_the_ledger_is_outside_the_process_a_second_gateway_sees_the_payment(
    ledger_url: str,
) -> None:
    gateway(ledger_url).refund("k1", 1, 100, "wechat_pay", ORIGINAL, None)
    other = gateway(ledger_url)  # another worker process, same remote
    assert other.refund("k1", 1, 100, "wechat_pay", ORIGINAL, None).succeeded
    assert other.payments_count(1) == 1


def test_a_declined_refund_is_stored_and_a_repeat_declines_again(ledger_url: str) -> None:
    fake = gateway(ledger_url, failure_rate=1.0)
    assert refund(fake, "k1") is RefundStatus.FAILED
    fake.behaviour = FakeBehaviour()  # the gateway would now pay, but not under k1
    assert refund(fake, "k1") is RefundStatus.FAILED
    assert refund(fake, "k2") is RefundStatus.SUCCEEDED
    assert [e.status for e in fake.ledger()] == [RefundStatus.FAILED, RefundStatus.SUCCEEDED]


def test_a_timeout_before_records_nothing_and_one_after_records_the_payment(
    ledger_url: str,
) -> None:
    fake = gateway(ledger_url)
    fake.script("timeout_before", "timeout_after")
    with pytest.raises(GatewayUnavailable):
        refund(fake, "k1")
    assert fake.ledger() == []
    with pytest.raises(GatewayUnavailable):
        refund(fake, "k1")
    assert fake.payments_count() == 1
    assert refund(fake, "k1") is RefundStatus.SUCCEEDED
    assert fake.payments_count() == 1


def test_the_timeout_rate_times_out_before_and_after_about_equally(ledger_url: str) -> None:
    fake = gateway(ledger_url, timeout_rate=1.0)
    for n in range(40):
        with pytest.raises(GatewayUnavailable):
            refund(fake, f"k{n}")
    recorded = fake.payments_count()
    assert 5 < recorded < 35


def test_draws_are_reproducible_with_a_seed(ledger_url: str, tmp_path: Path) -> None:
    def outcomes(url: str, seed: int) -> list[str]:
        fake = FakePaymentGateway(url, FakeBehaviour(failure_rate=0.3, timeout_rate=0.3), seed)
        seen = []
        for n in range(30):
            try:
                seen.append(refund(fake, f"k{n}").value)
            except GatewayUnavailable:
                seen.append("unavailable")
        return seen

    other = f"sqlite:///{tmp_path / 'other.db'}"
    third = f"sqlite:///{tmp_path / 'third.db'}"
    try:
        first = outcomes(ledger_url, seed=7)
        assert outcomes(other, seed=7) == first
        assert outcomes(third, seed=8) != first
        assert {"succeeded", "failed", "unavailable"} <= set(first)
    finally:
        dispose_engine(other)
        dispose_engine(third)


def test_latency_is_a_simulated_sleep_per_call(ledger_url: str) -> None:
    slept: list[float] = []
    fake = FakePaymentGateway(ledger_url, FakeBehaviour(latency_ms=250), sleep=slept.append)
    refund(fake, "k1")
    refund(fake, "k1")
    assert slept == [0.25, 0.25]


def test_a_bank_transfer_without_an_account_is_declined(ledger_url: str) -> None:
    fake = gateway(ledger_url)
    bank = RefundRoute.BANK_TRANSFER
    assert not fake.refund("k1", 1, 100, "wechat_pay", bank, None).succeeded
    assert fake.refund("k2", 1, 100, "wechat_pay", bank, ACCOUNT).succeeded


def test_a_non_positive_amount_is_refused_and_not_stored(ledger_url: str) -> None:
    fake = gateway(ledger_url)
    assert refund(fake, "k1", amount=0) is RefundStatus.FAILED
    assert fake.ledger() == []


def test_the_tables_are_created_once_whoever_comes_first(ledger_url: str) -> None:
    gateway(ledger_url)
    gateway(ledger_url)
    FakeNotifier(ledger_url)
    with make_engine(ledger_url).connect() as connection:
        assert connection.execute(fake_gateway_payments.select()).all() == []


def test_unknown_scripted_behaviours_are_refused(ledger_url: str) -> None:
    with pytest.raises(ValueError, match="unknown behaviours"):
        gateway(ledger_url).script("explode")  # type: ignore[arg-type]


# == carrier, shipper, notifier ====================================================================


def test_the_carrier_books_once_per_key_with_a_window_for_tomorrow() -> None:
    carrier = FakeCarrier(clock=FakeClock(NOW))
    first = carrier.book(1, "o1", "pickup-1-2")
    assert carrier.book(1, "o1", "pickup-1-2") == first
    assert carrier.book(1, "o1", "pickup-1-5") != first
    assert first.window.startswith("2026-11-21")
    # another process derives the same booking from the key
    assert FakeCarrier(clock=FakeClock(NOW)).book(1, "o1", "pickup-1-2") == first


def test_the_carrier_fails_as_unavailable_or_refuses_when_scripted() -> None:
    carrier = FakeCarrier(FakeBehaviour(failure_rate=1.0))
    with pytest.raises(GatewayUnavailable):
        carrier.book(1, "o1", "k")
    carrier.behaviour = FakeBehaviour()
    carrier.script("reject", "timeout_after")
    with pytest.raises(GatewayRejected):
        carrier.book(1, "o1", "k")
    with pytest.raises(GatewayUnavailable):
        carrier.book(1, "o1", "k")
    assert list(carrier.bookings) == ["k"]


def test_the_shipper_ships_once_per_key() -> None:
    shipper = FakeShipper()
    first = shipper.ship(1, "o1", ["A"], "outbound-1-6")
    assert shipper.ship(1, "o1", ["A"], "outbound-1-6") == first
    assert len(shipper.shipments) == 1


def test_the_notifier_delivers_a_key_once(ledger_url: str) -> None:
    notifier = FakeNotifier(ledger_url)
    notifier.send("buyer:b1", "t", "hello", "k1")
    notifier.send("buyer:b1", "t", "hello again", "k1")
    notifier.script("timeout_after", "fail")
    with pytest.raises(GatewayUnavailable):
        notifier.send("admins", "t", "alert", "k2")
    with pytest.raises(GatewayUnavailable):
        notifier.send("admins", "t", "alert", "k3")
    assert [(n.key, n.message) for n in notifier.sent()] == [("k1", "hello"), ("k2", "alert")]
    assert [n.key for n in notifier.sent("admins")] == ["k2"]


def test_the_notifier_delivers_a_batch_in_one_call_each_key_once(ledger_url: str) -> None:
    notifier = FakeNotifier(ledger_url)
    notifier.send("buyer:b1", "t", "hello", "k1")
    # a batch repeating a delivered key, and a key twice within itself
    batch = [Delivery("buyer:b1", "t", "hello", "k1"), Delivery("buyer:b2", "t", "hi", "k2")]
    notifier.send_many([*batch, Delivery("buyer:b2", "t", "hi", "k2")])
    assert notifier.calls == 2
    assert [(n.key, n.recipient) for n in notifier.sent()] == [
        ("k1", "buyer:b1"),
        ("k2", "buyer:b2"),
    ]
    # an unavailable call delivers nothing; a lost answer delivered all
    notifier.script("fail", "timeout_after")
    with pytest.raises(GatewayUnavailable):
        notifier.send_many([Delivery("admins", "t", "a", "k3")])
    with pytest.raises(GatewayUnavailable):
        notifier.send_many([Delivery("admins", "t", "a", "k4"), Delivery("admins", "t", "b", "k5")])
    assert [n.key for n in notifier.sent("admins")] == ["k4", "k5"]


# == settings ======================================================================================


def test_settings_come_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AFTERSALES_FAKE_PAYMENT_FAILURE_RATE", "0.2")
    monkeypatch.setenv("AFTERSALES_FAKE_PAYMENT_TIMEOUT_RATE", "0.1")
    monkeypatch.setenv("AFTERSALES_FAKE_CARRIER_LATENCY_MS", "1500")
    monkeypatch.setenv("AFTERSALES_FAKE_SEED", "42")
    settings = FakeGatewaySettings()
    assert settings.payment == FakeBehaviour(failure_rate=0.2, timeout_rate=0.1)
    assert settings.carrier.latency_ms == 1500
    assert settings.seed == 42 and settings.ledger_url is None


@pytest.mark.parametrize(
    "values",
    [
        {"payment_failure_rate": 1.5},
        {"carrier_timeout_rate": -0.1},
        {"notifier_failure_rate": 0.6, "notifier_timeout_rate": 0.6},
        {"shipper_latency_ms": -1},
    ],
)
def test_settings_refuse_impossible_values(values: dict[str, float]) -> None:
    with pytest.raises(ValidationError):
        FakeGatewaySettings(**values)  # type: ignore[arg-type]


def test_the_ledgers_live_in_the_service_database_unless_told_otherwise(
    ledger_url: str, tmp_path: Path
) -> None:
    fakes = build_fake_gateways(FakeGatewaySettings(), ledger_url)
    assert fakes.payments.url == ledger_url == fakes.notifier.url
    elsewhere = f"sqlite:///{tmp_path / 'elsewhere.db'}"
    try:
        moved = build_fake_gateways(FakeGatewaySettings(ledger_url=elsewhere), ledger_url)
        assert moved.payments.url == elsewhere
    finally:
        dispose_engine(elsewhere)
