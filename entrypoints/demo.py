"""The scripted demo (``aftersales demo``, ``make run``): sample cases of every type on a
simulated clock, through the same wiring, service and renderers as the CLI.

Each scenario reads like the policy it shows: who acts, what the timers do when nobody acts, and
what a refusal says. The scenarios run one after another on one ``FakeClock`` and each ends its
case before the next starts, so sweeping the due timers only ever fires the current case's.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, tzinfo
from pathlib import Path
from typing import Any

from rich import box
from rich.console import Console
from rich.rule import Rule
from rich.table import Table
from rich.text import Text

from config.settings import DatabaseSettings, Settings, sqlite_url
from entrypoints import composition, render, views
from workflow import channels
from workflow.clock import FakeClock
from workflow.errors import PolicyRefusal
from workflow.model import SYSTEM, Actor
from workflow.orders_service import OrderService
from workflow.service import CaseService
from workflow.states import CaseState, Role

#: 10:00 in Shanghai: a weekday morning when the first application comes in.
START = datetime(2026, 11, 20, 2, 0, tzinfo=UTC)

BUYER = Actor(Role.BUYER, "b-1001")
MERCHANT = Actor(Role.MERCHANT, "m-shop")
CARRIER = Actor(Role.CARRIER)
PAYMENT = Actor(Role.PAYMENT)
#: Who imports the demo's orders of record: the order system, as its producer would.
ORDER_SYSTEM = Actor(Role.SYSTEM, "orders:order-system")


@dataclass(frozen=True)
class Outcome:
    """One line of the summary table."""

    title: str
    case_type: str
    case_id: int | None
    final_state: str
    refund_amount: int | None
    note: str

    def as_json(self) -> dict[str, Any]:
        return {
            "title": self.title,
            "type": self.case_type,
            "case_id": self.case_id,
            "final_state": self.final_state,
            "refund_amount": self.refund_amount,
            "note": self.note,
        }


def order_and_application(
    number: int,
    now: datetime,
    case_type: str,
    category: str,
    reason: str,
    paid_days_ago: float,
    delivered_days_ago: float | None,
    price: int,
    *,
    gifts: list[dict[str, Any]] | None = None,
    channel: str = "wechat_pay",
    description: str = "",
    order_prefix: str = "o-2026",
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Order ``number`` of one line, dated relative to ``now``, as the order system sends it,
    and an application for that line, as a buyer's app sends it: the application names the
    order; the case's facts come from the order."""
    delivered = None if delivered_days_ago is None else now - timedelta(days=delivered_days_ago)
    order_id, sku = f"{order_prefix}-{number:04d}", f"sku-{number}"
    order = {
        "order_id": order_id,
        "buyer_id": BUYER.id,
        "merchant_id": MERCHANT.id,
        "payment": {
            "channel": channel,
            "amount": price,
            "paid_at": (now - timedelta(days=paid_days_ago)).isoformat(),
        },
        "delivered_at": delivered.isoformat() if delivered else None,
        "lines": [{"sku": sku, "quantity": 1, "unit_price": price, "category": category}],
        "gifts": gifts or [],
    }
    application = {
        "type": case_type,
        "order_id": order_id,
        "buyer_id": BUYER.id,
        "reason": reason,
        "description": description,
        "items": [{"sku": sku, "quantity": 1}],
    }
    return order, application


def import_order(orders: OrderService, order: dict[str, Any]) -> None:
    """Import ``order`` as the order system does; the demos' orders are never refused."""
    result = orders.import_orders([order], ORDER_SYSTEM)
    if result.refused:
        raise AssertionError(f"the demo's order was refused: {result.refused[0].message}")


class _Script:
    """The demo's stage: a service, the clock it reads, and where the story is printed."""

    def __init__(
        self,
        service: CaseService,
        orders: OrderService,
        clock: FakeClock,
        console: Console | None,
        zone: tzinfo,
    ) -> None:
        self.service = service
        self.orders = orders
        self.clock = clock
        self.console = console
        self.zone = zone  # the display zone, as every command shows times
        self._orders = 0

    def application(self, case_type: str, *terms: Any, **options: Any) -> dict[str, Any]:
        """Import an order dated relative to the clock (``order_and_application``'s terms) and
        return the application for it."""
        self._orders += 1
        order, application = order_and_application(
            self._orders, self.clock.now(), case_type, *terms, **options
        )
        import_order(self.orders, order)
        return application

    def submit(self, application: dict[str, Any]) -> int:
        case_id = self.service.submit(application, BUYER, source=channels.DEMO).case.id
        assert case_id is not None
        return case_id

    def fire(
        self,
        case_id: int,
        trigger: str,
        actor: Actor,
        after: timedelta = timedelta(0),
        **data: Any,
    ) -> None:
        self.clock.advance(after)
        self.service.fire(case_id, trigger, actor, data or None, source=channels.DEMO)

    def wait_for_timers(self, after: timedelta) -> None:
        """Let time pass with nobody acting, then sweep as ``aftersales timers run-due`` does."""
        self.clock.advance(after)
        self.service.run_due_timers()

    def heading(self, number: int, title: str, story: str) -> None:
        if self.console is None:
            return
        self.console.print()
        self.console.print(Rule(f"[bold]{number}. {title}", align="left"))
        self.console.print(Text(story, style="italic"))

    def finish(self, title: str, case_id: int, note: str) -> Outcome:
        view = self.service.get(case_id)
        case = view.case
        if self.console is not None:
            self.console.print(render.history_timeline(self.service.history(case_id), self.zone))
            line = Text.assemble(f"case {case_id} ends ", render.state_text(case.state))
            if case.state is CaseState.REFUNDED and case.refund_route is not None:
                line.append(f" · {views.yuan(case.refund_amount)} via {case.refund_route.value}")
            self.console.print(line)
        refunded = case.refund_amount if case.state is CaseState.REFUNDED else None
        return Outcome(title, case.type.value, case_id, case.state.value, refunded, note)


def _return_with_missing_gift(script: _Script) -> Outcome:
    title = "Return and refund, a gift missing"
    script.heading(
        1,
        title,
        "A jacket (¥199) with a free scarf (declared ¥5) goes back within the 7-day no-reason "
        "window; the scarf does not come back, so the refund is ¥5 less.",
    )
    app = script.application(
        "return_refund",
        "clothing",
        "no_reason",
        paid_days_ago=5,
        delivered_days_ago=2,
        price=19_900,
        gifts=[{"sku": "gift-scarf", "quantity": 1, "value": 500}],
    )
    case_id = script.submit(app)
    script.fire(case_id, "approve", MERCHANT, timedelta(hours=3))
    script.fire(case_id, "book_pickup", SYSTEM, carrier="SF", pickup_code="PK-88213")
    script.fire(case_id, "ship_back", BUYER, timedelta(days=1), tracking_no="SF1234567890")
    script.fire(case_id, "record_return_delivery", CARRIER, timedelta(days=2))
    script.fire(case_id, "confirm_receipt", MERCHANT, timedelta(hours=4))
    script.fire(case_id, "inspect", MERCHANT, timedelta(hours=2), gifts_missing=["gift-scarf"])
    script.fire(case_id, "confirm_refund", PAYMENT, timedelta(minutes=10), reference="wx-rf-001")
    return script.finish(title, case_id, "gift deduction ¥5.00")


def _exchange(script: _Script) -> Outcome:
    title = "Exchange of a faulty phone"
    script.heading(
        2,
        title,
        "A phone with a dead speaker, 12 days after delivery (a quality problem is exchanged "
        "within 15 days, repaired within the 1-year warranty): "
        "it goes back, the merchant ships a replacement, the buyer confirms.",
    )
    app = script.application(
        "exchange",
        "phone",
        "quality_issue",
        paid_days_ago=16,
        delivered_days_ago=12,
        price=329_900,
        description="speaker silent",
    )
    case_id = script.submit(app)
    script.fire(case_id, "approve", MERCHANT, timedelta(hours=5))
    script.fire(case_id, "book_pickup", SYSTEM, carrier="JD", pickup_code="JD-5521")
    script.fire(case_id, "ship_back", BUYER, timedelta(hours=20), tracking_no="JD0099887766")
    script.fire(case_id, "record_return_delivery", CARRIER, timedelta(days=1))
    script.fire(case_id, "confirm_receipt", MERCHANT, timedelta(hours=2))
    script.fire(case_id, "inspect", MERCHANT, timedelta(hours=6), note="speaker fault confirmed")
    script.fire(
        case_id, "ship_replacement", MERCHANT, timedelta(hours=8), tracking_no="JD0099880001"
    )
    script.fire(case_id, "record_buyer_delivery", CARRIER, timedelta(days=1))
    script.fire(case_id, "confirm_delivery", BUYER, timedelta(hours=3))
    return script.finish(title, case_id, "buyer confirmed")


def _repair(script: _Script) -> Outcome:
    title = "Warranty repair, auto-confirmed"
    script.heading(
        3,
        title,
        "Headphones failing 5 months after delivery (electronics: 12-month warranty) are "
        "repaired; the buyer never confirms, so after 10 days the case completes by itself.",
    )
    app = script.application(
        "repair",
        "electronics",
        "quality_issue",
        paid_days_ago=155,
        delivered_days_ago=150,
        price=89_900,
    )
    case_id = script.submit(app)
    script.fire(case_id, "approve", MERCHANT, timedelta(hours=20))
    script.fire(case_id, "ship_back", BUYER, timedelta(days=1), tracking_no="YT5566778899")
    script.fire(case_id, "record_return_delivery", CARRIER, timedelta(days=2))
    script.fire(case_id, "confirm_receipt", MERCHANT, timedelta(hours=1))
    script.fire(case_id, "inspect", MERCHANT, timedelta(hours=4), note="loose connector")
    script.fire(case_id, "ship_repaired", MERCHANT, timedelta(days=3), tracking_no="YT5566770000")
    script.fire(case_id, "record_buyer_delivery", CARRIER, timedelta(days=1))
    script.wait_for_timers(script.service.policy.timer("buyer_confirmation", "repair"))
    return script.finish(title, case_id, "confirmation timer")


def _refund_by_bank_transfer(script: _Script) -> Outcome:
    title = "Refund only, past the WeChat Pay window"
    script.heading(
        4,
        title,
        "A pre-order paid 380 days ago never arrived. WeChat Pay refunds only within 365 days "
        "of payment, so the buyer is asked for a bank account and is paid by transfer.",
    )
    app = script.application(
        "refund_only",
        "home",
        "not_received",
        paid_days_ago=380,
        delivered_days_ago=None,
        price=45_800,
    )
    case_id = script.submit(app)
    script.fire(case_id, "approve", MERCHANT, timedelta(hours=6))
    script.fire(
        case_id,
        "provide_bank_account",
        BUYER,
        timedelta(days=1),
        holder="Li Wei",
        bank="ICBC",
        account_no="6222020200112233",
    )
    script.fire(case_id, "confirm_refund", PAYMENT, timedelta(hours=2), reference="bank-tx-7781")
    return script.finish(title, case_id, "bank transfer to …2233")


def _timeouts(script: _Script) -> Outcome:
    title = "Nobody acts: auto-approve, then closed"
    script.heading(
        5,
        title,
        "The merchant does not review within 48 hours, so the application is approved "
        "automatically; the buyer then never ships, so the case closes after 7 days.",
    )
    app = script.application(
        "return_refund",
        "home",
        "no_reason",
        paid_days_ago=4,
        delivered_days_ago=1,
        price=12_800,
    )
    case_id = script.submit(app)
    script.wait_for_timers(script.service.policy.timer("merchant_review", "return_refund"))
    script.fire(case_id, "book_pickup", SYSTEM, carrier="ZTO", pickup_code="ZT-3007")
    script.wait_for_timers(script.service.policy.timer("return_shipment", "return_refund"))
    return script.finish(title, case_id, "review, then shipping timer")


def _refusal(script: _Script) -> Outcome:
    title = "Refused: no-reason return on day 9"
    script.heading(
        6,
        title,
        "A no-reason return asked for 9 days after delivery: the 7-day window (counted from "
        "the day after delivery) has closed, and nothing is created.",
    )
    app = script.application(
        "return_refund",
        "clothing",
        "no_reason",
        paid_days_ago=12,
        delivered_days_ago=9,
        price=25_900,
    )
    try:
        script.submit(app)
    except PolicyRefusal as refusal:
        if script.console is not None:
            script.console.print(Text(f"error: {refusal}", style="red"), soft_wrap=True)
        return Outcome(title, "return_refund", None, "refused", None, f"rule {refusal.rule}")
    raise AssertionError("the no-reason window should have refused this application")


SCENARIOS: tuple[Callable[[_Script], Outcome], ...] = (
    _return_with_missing_gift,
    _exchange,
    _repair,
    _refund_by_bank_transfer,
    _timeouts,
    _refusal,
)


def run(db_path: Path, console: Console | None = None) -> list[Outcome]:
    """Run every scenario on a fresh SQLite file at ``db_path``; print them if ``console``."""
    # Explicit values, not the environment: the demo always shows the default policy.
    settings = Settings(database=DatabaseSettings(url=sqlite_url(db_path)), policy_file=None)
    composition.recreate_embedded_database(settings)
    clock = FakeClock(START)
    service = composition.build_service(settings, clock)
    orders = composition.build_order_service(settings, service)
    script = _Script(service, orders, clock, console, settings.display_zone)
    if console is not None:
        console.print(
            f"[bold]after-sales demo[/] on {composition.display_url(settings.database.url)}, "
            f"simulated clock from {views.local(START, script.zone)}"
        )
    outcomes = [scenario(script) for scenario in SCENARIOS]
    if console is not None:
        console.print()
        console.print(summary_table(outcomes))
    return outcomes


def summary_table(outcomes: list[Outcome]) -> Table:
    table = Table(title="summary", box=box.SIMPLE_HEAD, title_justify="left")
    table.add_column("#", justify="right")
    table.add_column("case", justify="right")
    table.add_column("type", no_wrap=True)
    table.add_column("final state", no_wrap=True)
    table.add_column("refund", justify="right", no_wrap=True)
    table.add_column("scenario")
    table.add_column("note")
    for number, outcome in enumerate(outcomes, start=1):
        table.add_row(
            str(number),
            str(outcome.case_id) if outcome.case_id is not None else "—",
            outcome.case_type,
            Text(outcome.final_state, style="bold red")
            if outcome.case_id is None
            else render.state_text(CaseState(outcome.final_state)),
            views.yuan(outcome.refund_amount),
            outcome.title,
            outcome.note,
        )
    return table
