"""The live demo (``aftersales demo --live``, ``make run``): the real service moving cases.

It starts ``aftersales run`` (worker and beat on the embedded broker and SQLite, files in
``var/demo-live/``, the HTTP API on ``127.0.0.1:8000`` or ``--port``; a port already taken stops
it before anything starts) and then does only what the outside world does: buyers submit, merchants,
buyers and the carrier send events through the broker, and time passes on the shared clock file.
The screen follows the cases from the database. Pauses are for people, on a terminal only.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import sys
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

from rich import box
from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.table import Table
from rich.text import Text

from adapters.fake_gateways import build_fake_gateways
from config.settings import FakeGatewaySettings
from entrypoints import composition, render, views
from entrypoints.demo import (
    BUYER,
    MERCHANT,
    START,
    Outcome,
    import_order,
    order_and_application,
    summary_table,
)
from entrypoints.live_worker import (
    API_HOST,
    API_PORT,
    SWEEP_S,
    DemoFailed,
    check_api_port,
    check_api_started,
    interrupt,
    prepare,
    settings_for,
    start_worker,
)
from entrypoints.processes import ChildProcess, wait_until
from tasks.app import create_app
from tasks.kick import RELAY_TASK
from tasks.producer import INGEST_TASK, make_envelope
from workflow.clock import FileClock
from workflow.errors import PolicyRefusal
from workflow.model import RefundRoute, TransitionRecord
from workflow.service import CaseView
from workflow.states import CaseState

#: The demo's folder, relative to the directory it runs in; deleted and recreated on each run.
DEMO_DIR = Path("var") / "demo-live"
#: Straight to the API on this host, whatever proxy ``http_proxy`` names.
_DIRECT = urllib.request.build_opener(urllib.request.ProxyHandler({}))
#: Upper bounds of the waits; a healthy run needs a small fraction of each.
READY_TIMEOUT_S, STEP_TIMEOUT_S, STOP_GRACE_S = 90.0, 30.0, 20.0
POLL_S = 0.1
#: On a terminal, the pause before each narrated step (and half of it after).
TERMINAL_PACE_S = 1.5
#: From this many columns the table also names each case's scenario.
WIDE = 130
#: The line celery logs when an ingest task ends; its result is the ``IngestResult`` status.
_INGESTED = re.compile(
    r"Task aftersales\.ingest_event\[(?P<id>[^\]]+)\] "
    r"(?:succeeded in [^:]*: '(?P<status>[a-z_]+)'|(?P<failure>raised .*))"
)
#: Event ids as each producer might number them: ``sf-00012``, ``mp-00003``.
_EVENT_PREFIX = {"sf-express": "sf", "merchant-portal": "mp", "buyer-app": "app"}


@dataclass(eq=False)
class Sample:
    """One sample case: a row of the live table and, at the end, of the summary."""

    number: int
    title: str
    label: str
    case_type: str
    case_id: int = 0  # 0 until submitted; stays 0 when refused
    note: str = ""
    refusal: PolicyRefusal | None = None

    def parcel(self, outbound: bool = False) -> str:
        """The tracking number of the return parcel, or of the goods going to the buyer."""
        return f"SF{8 if outbound else 7}{self.number:08d}"


class LiveDemo:
    """Drives the running worker as the outside world would and shows what it does."""

    def __init__(
        self, folder: Path, worker: ChildProcess, console: Console | None, api_url: str
    ) -> None:
        self.folder, self.worker, self.console, self.api_url = folder, worker, console, api_url
        self.pace = TERMINAL_PACE_S if console is not None and console.is_terminal else 0.0
        self.settings = settings_for(folder)
        self.clock = FileClock(str(folder / "clock"))
        # Events go through an app with the worker's broker settings (the embedded broker has
        # no URL of its own): the same ``send_task(INGEST_TASK, ...)`` producers make.
        self.broker = create_app(self.settings)
        self.service = composition.build_service(
            self.settings, self.clock, outbox_written=lambda: self.broker.send_task(RELAY_TASK)
        )
        # The order system's import: orders of record come before the applications naming them.
        self.orders = composition.build_order_service(self.settings, self.service)
        self.zone = self.settings.display_zone  # as every command shows times
        self.samples: list[Sample] = []
        self.sent: list[tuple[str, dict[str, Any]]] = []  # (ingest task id, event's JSON)
        self.results: dict[str, str] = {}  # ingest task id -> its status, from the worker's log
        self.checked = 0  # sent[:checked] have been waited for by ingested()
        self.numbered = 0  # events made (a repeated one is sent again under its number)
        self.views: dict[int, CaseView] = {}
        self.histories: dict[int, list[TransitionRecord]] = {}
        self.live: Live | None = None

    # -- following the worker and the cases -------------------------------------------------------
    def print(self, renderable: RenderableType) -> None:
        console = self.live.console if self.live is not None else self.console
        if console is not None:
            console.print(renderable)

    def poll(self) -> None:
        """Read the worker's log and every case; print new transitions; redraw the table."""
        for match in _INGESTED.finditer(self.worker.output()):
            self.results[match["id"]] = match["status"] or f"error: {match['failure']}"
        for case_id in (sample.case_id for sample in self.samples if sample.case_id):
            self.views[case_id], history = self.service.get(case_id), self.service.history(case_id)
            for record in history[len(self.histories.get(case_id, [])) :]:
                line = Text(f"    case {case_id} ", style="dim")
                line.append_text(render.state_text(record.from_state)).append(" → ")
                line.append_text(render.state_text(record.to_state))
                self.print(line.append(f"  {record.trigger} by {record.actor}", style="dim"))
            self.histories[case_id] = history
        if self.live is not None:
            self.live.update(self.screen(), refresh=True)

    def wait(
        self, what: str, condition: Callable[[], bool], timeout: float = STEP_TIMEOUT_S
    ) -> None:
        def met() -> bool:
            self.poll()
            if not condition() and not self.worker.alive():
                code = self.worker.returncode
                raise DemoFailed(f"the worker exited (code {code}) while waiting for {what}")
            return condition()

        try:
            wait_until(met, what, timeout, every=POLL_S)
        except TimeoutError as error:
            raise DemoFailed(str(error)) from None

    def pause(self, seconds: float) -> None:
        """Let people read (terminal only); the table keeps refreshing meanwhile."""
        until = time.monotonic() + seconds
        while time.monotonic() < until:
            self.poll()
            time.sleep(POLL_S)

    def state(self, sample: Sample) -> str:
        view = self.views.get(sample.case_id)
        return view.case.state.value if view else "?"

    def expect(self, state: CaseState, *samples: Sample, why: str) -> None:
        """Wait until every one of ``samples`` is in ``state``."""
        try:
            self.wait(why, lambda: all(self.state(s) == state.value for s in samples))
        except DemoFailed as error:
            now = ", ".join(f"case {s.case_id} is {self.state(s)}" for s in samples)
            raise DemoFailed(f"{error} (expected {state.value}; {now})") from None

    # -- what is shown ----------------------------------------------------------------------------
    def say(self, text: str) -> None:
        """A step's narration: after a pause to look at the last step's result, before it acts."""
        self.pause(self.pace)
        now = views.local_time(self.clock.now(), self.zone)
        self.print(Text.assemble(("\n" + now + "  ", "bold magenta"), (text, "bold")))
        self.pause(self.pace / 2)

    def aside(self, text: str, style: str = "italic") -> None:
        self.print(Text("    " + text, style=style))

    def screen(self) -> RenderableType:
        """The clock and worker, then case, type, state, deadline, last transition, refund (and
        the scenario when it fits)."""
        now = self.clock.now()
        header = Text.assemble(
            ("after-sales, live", "bold"),
            f" · simulated clock {views.local(now, self.zone)} · worker pid {self.worker.pid}"
            " (aftersales run) · ",
            (str(self.folder), "dim"),
        )
        wide = (self.console.width if self.console is not None else WIDE) >= WIDE
        table = Table(box=box.SIMPLE_HEAD, pad_edge=False)
        table.add_column("case", justify="right", no_wrap=True)
        for name in ("scenario", "type", "state", "deadline", "last transition", "refund"):
            if name != "scenario" or wide:
                table.add_column(name, no_wrap=name in ("type", "state"))
        table.columns[-1].justify = "right"
        for sample in self.samples:
            label = [sample.label] if wide else []
            view = self.views.get(sample.case_id)
            if view is None:
                refused = Text("refused", style="bold red") if sample.refusal else Text("…")
                rule = f"rule {sample.refusal.rule if sample.refusal else ''}"
                table.add_row("—", *label, sample.case_type, refused, "", rule, "")
                continue
            case, due, history = view.case, view.deadline, self.histories.get(sample.case_id)
            deadline = Text("—", style="dim")
            if due is not None:
                style = "bold red" if due.due_at <= now else ""
                deadline = Text(f"{views.relative(due.due_at, now)} → {due.trigger}", style=style)
            last = Text()
            if history:
                last.append(f"{history[-1].at.astimezone(self.zone):%m-%d %H:%M} ", style="dim")
                last.append(history[-1].trigger)
                last.append(f" ({history[-1].actor.partition(':')[0]})", style="dim")
            refund = ""
            if case.refund_route is not None:
                bank = case.refund_route is RefundRoute.BANK_TRANSFER
                to = "by bank transfer" if bank else f"to {case.payment.channel}"
                refund = f"{views.yuan(case.refund_amount)} {to}"
            state = render.state_text(case.state)
            table.add_row(str(case.id), *label, case.type.value, state, deadline, last, refund)
        return Group(header, table)

    # -- what the outside world does --------------------------------------------------------------
    def submit(self, sample: Sample, *terms: Any, **options: Any) -> None:
        """Import an order dated relative to the clock (``demo.order_and_application``'s terms)
        as the order system does, then submit the application for it, as a buyer's app."""
        now = self.clock.now()
        order, app = order_and_application(
            sample.number, now, sample.case_type, *terms, **options, order_prefix="o-live"
        )
        import_order(self.orders, order)
        sample.case_id = self.service.submit(app, BUYER).case.id or 0

    def event(
        self, sample: Sample, source: str, event_type: str, parcel: str | None = None, **data: Any
    ) -> dict[str, Any]:
        """Queue one event: a carrier names the order and parcel, front ends name the case."""
        self.numbered += 1
        envelope = make_envelope(
            source,
            event_type,
            case_id=None if parcel else sample.case_id,
            order_id=f"o-live-{sample.number:04d}" if parcel else None,
            tracking_no=parcel,
            data=data or None,
            event_id=f"{_EVENT_PREFIX[source]}-{self.numbered:05d}",
            occurred_at=self.clock.now(),
        )
        self.send(sample, envelope)
        return envelope

    def merchant(self, sample: Sample, event: str, **data: Any) -> None:
        self.event(sample, "merchant-portal", f"merchant.{event}", merchant_id=MERCHANT.id, **data)

    def buyer(self, sample: Sample, event: str, **data: Any) -> None:
        self.event(sample, "buyer-app", f"buyer.{event}", buyer_id=BUYER.id, **data)

    def carrier(self, sample: Sample, event: str, parcel: str, **data: Any) -> dict[str, Any]:
        return self.event(sample, "sf-express", event, parcel, **data)

    def send(self, sample: Sample, envelope: dict[str, Any]) -> None:
        task = self.broker.send_task(INGEST_TASK, args=[envelope])
        event = {key: envelope[key] for key in ("event_id", "source", "type")}
        self.sent.append((str(task.id), event | {"case_id": sample.case_id}))

    def ingested(self, expected: dict[str, int] | None = None) -> list[str]:
        """Wait until the worker has ingested every queued event; their statuses, in order.
        Every event must apply unless ``expected`` counts other statuses (the duplicate)."""
        waiting = [task_id for task_id, _ in self.sent[self.checked :]]
        self.checked = len(self.sent)
        self.wait(
            f"the worker to ingest {len(waiting)} event(s)",
            lambda: all(task_id in self.results for task_id in waiting),
        )
        statuses = [self.results[task_id] for task_id in waiting]
        wanted = expected or {"applied": len(waiting)}
        counted = {status: statuses.count(status) for status in set(statuses)}
        if counted != wanted:
            letters = composition.build_event_service(self.settings, self.service).dead_letters()
            told = "; ".join(f"{d.event_id}: {d.reason}" for d in letters)
            told = f"; dead letters: {told}" if told else ""
            raise DemoFailed(f"events ended {counted}, expected {wanted}{told}")
        return statuses

    def settle(self, state: CaseState, *samples: Sample, why: str) -> None:
        """Wait until the worker has applied every queued event and ``samples`` are in ``state``."""
        self.ingested()
        self.expect(state, *samples, why=why)

    def wait_ready(self) -> None:
        """Send ``aftersales.ping`` and wait for its proof: the worker consumes the broker."""
        token = f"live-demo-{os.getpid()}"
        self.broker.send_task("aftersales.ping", args=[token])
        self.print(
            f"[bold]after-sales live demo[/]: started `aftersales run` (pid {self.worker.pid})"
            f" on {self.folder}; waiting for it to take tasks…"
        )
        proof = self.folder / "worker-pings" / token
        self.wait("the worker to run a ping", proof.exists, READY_TIMEOUT_S)
        self.print(
            f"worker ready: it consumes the embedded broker, beat sweeps timers every {SWEEP_S} s,"
            f" and every process reads the clock from {self.folder / 'clock'}"
        )
        self.wait("the API to answer /healthz", self.api_answers, READY_TIMEOUT_S)
        self.print(f"[bold]API listening on {self.api_url}[/] until the demo ends (docs: /docs)")
        self.aside(
            f"a token for it: AFTERSALES_DATABASE_URL={self.settings.database.url} "
            "aftersales tokens create --role admin",
            style="dim",
        )

    def api_answers(self) -> bool:
        """The API's liveness answers; ``DemoFailed`` at once if uvicorn could not listen."""
        check_api_started(self.worker.output())
        try:
            with _DIRECT.open(f"{self.api_url}/healthz", timeout=1) as response:
                return bool(response.status == 200)
        except OSError:
            return False

    def reference(self, sample: Sample) -> str:
        refunds = [r for r in self.service.history(sample.case_id) if r.trigger == "confirm_refund"]
        return f" (reference {refunds[-1].data.get('reference')})" if refunds else ""

    def paid(self, sample: Sample) -> str:
        """What the fake payment gateway's ledger holds for the case: one payment."""
        payments = build_fake_gateways(
            FakeGatewaySettings(ledger_url=None), self.settings.database.url, self.clock
        ).payments
        if (count := payments.payments_count(sample.case_id)) != 1:
            raise DemoFailed(f"case {sample.case_id} was paid {count} times")
        return f" ({views.yuan(payments.amount_paid(sample.case_id))})"

    # -- the play ---------------------------------------------------------------------------------
    def play(self) -> list[Outcome]:
        self.wait_ready()
        if self.console is not None and self.console.is_terminal:
            self.live = Live(self.screen(), console=self.console, auto_refresh=False)
        with self.live if self.live is not None else contextlib.nullcontext():
            try:
                self.story()
            finally:
                self.poll()
        if self.console is not None and self.live is None:
            self.console.print()
            self.console.print(self.screen())
        self.live = None
        return [self.outcome(sample) for sample in self.samples]

    def outcome(self, sample: Sample) -> Outcome:
        if not sample.case_id:
            return Outcome(sample.title, sample.case_type, None, "refused", None, sample.note)
        case = self.service.get(sample.case_id).case
        refund = case.refund_amount if case.state is CaseState.REFUNDED else None
        return Outcome(
            sample.title, case.type.value, case.id, case.state.value, refund, sample.note
        )

    def step(self, when: float | Sample, text: str) -> None:
        """Move the clock to ``START + when`` hours (never back), or an hour past the sample's
        pending deadline for beat's sweep to fire it; then narrate."""
        if isinstance(when, Sample):
            deadline = self.service.get(when.case_id).deadline
            if deadline is None:
                raise DemoFailed(f"case {when.case_id} has no pending deadline")
            self.clock.set(deadline.due_at + timedelta(hours=1))
        else:
            self.clock.set(max(self.clock.now(), START + timedelta(hours=when)))
        self.say(text)

    def story(self) -> None:
        def sample(title: str, label: str, case_type: str = "return_refund") -> Sample:
            self.samples.append(Sample(len(self.samples) + 1, title, label, case_type))
            return self.samples[-1]

        jacket = sample("Return and refund, a gift missing", "jacket, scarf missing")
        phone = sample("Exchange of a faulty phone", "phone, speaker dead", "exchange")
        headphones = sample("Warranty repair, auto-confirmed", "headphones repair", "repair")
        preorder = sample(
            "Refund only, past the WeChat Pay window", "pre-order lost", "refund_only"
        )
        idle = sample("Nobody acts: auto-approve, then closed", "nobody acts")
        late = sample("Refused: no-reason return on day 9", "day-9 no-reason")
        returns, outbound = (jacket, phone, headphones), (phone, headphones)

        self.say(
            "The order system imports six orders of record; their buyers apply for after-sales "
            "(the buyer's app calls CaseService.submit), naming the order and the line."
        )
        scarf = {"sku": "gift-scarf", "quantity": 1, "value": 500}
        self.submit(
            jacket, "clothing", "no_reason", 5, 2, 19_900, gifts=[scarf], description="small"
        )
        self.submit(phone, "phone", "quality_issue", 16, 12, 329_900, description="mute")
        self.submit(headphones, "electronics", "quality_issue", 155, 150, 89_900)
        self.submit(preorder, "home", "not_received", 380, None, 45_800)
        self.submit(idle, "home", "no_reason", 4, 1, 12_800)
        try:
            self.submit(late, "clothing", "no_reason", 12, 9, 25_900)
            raise DemoFailed("the day-9 no-reason return should have been refused")
        except PolicyRefusal as refusal:
            late.refusal = refusal
            self.aside(f"the sixth is refused, no case is created: {refusal}", style="red")
        self.expect(CaseState.SUBMITTED, *self.samples[:5], why="the five submissions")

        self.step(
            2,
            f"The merchant approves cases {jacket.case_id}, {phone.case_id}, "
            f"{headphones.case_id}, {preorder.case_id} on the merchant portal (merchant.approved "
            f"events); nobody looks at case {idle.case_id}.",
        )
        for approved in (*returns, preorder):
            self.merchant(approved, "approved")
        self.settle(CaseState.PICKUP, *returns, why="the worker to book the courier pickups")
        self.expect(
            CaseState.AWAITING_BANK_ACCOUNT, preorder, why="the pre-order's refund to start"
        )
        self.aside(
            "the worker booked the three courier pickups with the (fake) carrier; case "
            f"{preorder.case_id} was paid 380 days ago, past WeChat Pay's 365-day refund window, "
            "so it waits for a bank account"
        )

        self.step(
            6, "The courier collects the three return parcels (parcel.picked_up, sf-express)."
        )
        for goods in returns:
            self.carrier(goods, "parcel.picked_up", goods.parcel(), carrier="SF")
        self.settle(CaseState.SHIPPED_BACK, *returns, why="the pickups")

        self.step(
            26,
            "Next day the carrier reports the return parcels delivered; its webhook fires twice "
            f"for case {jacket.case_id}'s parcel (the same event_id).",
        )
        delivered = self.carrier(jacket, "parcel.delivered", jacket.parcel())
        self.send(jacket, dict(delivered))
        for goods in outbound:
            self.carrier(goods, "parcel.delivered", goods.parcel())
        statuses = self.ingested({"applied": 3, "duplicate": 1})
        self.expect(CaseState.RETURN_DELIVERED, *returns, why="the deliveries")
        history = self.service.history(jacket.case_id)
        moves = [record for record in history if record.trigger == "record_return_delivery"]
        self.aside(
            f"event {delivered['event_id']} twice → {statuses[0]}, {statuses[1]}: case "
            f"{jacket.case_id}'s history holds {len(moves)} record_return_delivery"
        )
        if len(moves) != 1:
            raise DemoFailed(f"the repeated delivery moved case {jacket.case_id} twice")

        self.step(
            28, "The merchant confirms receipt of the three parcels (merchant.receipt_confirmed)."
        )
        for goods in returns:
            self.merchant(goods, "receipt_confirmed")
        self.settle(CaseState.RECEIVED, *returns, why="the receipts")

        self.step(
            30,
            "The merchant inspects: the jacket came back without its free scarf (−¥5.00); the "
            "phone's and the headphones' faults are confirmed (merchant.inspected).",
        )
        self.merchant(jacket, "inspected", gifts_missing=["gift-scarf"])
        self.merchant(phone, "inspected", note="speaker fault")
        self.merchant(headphones, "inspected", note="connector")
        self.settle(CaseState.REFUNDED, jacket, why="the worker to pay the jacket's refund")
        self.expect(CaseState.INSPECTED, *outbound, why="the inspections")
        self.aside(
            f"case {jacket.case_id}: the inspection started the refund; the worker paid it "
            f"through the (fake) payment gateway{self.reference(jacket)} → refunded"
        )

        self.step(31, "The merchant ships the replacement phone and the repaired headphones.")
        for goods, shipped in zip(
            outbound, ("replacement_shipped", "repaired_shipped"), strict=True
        ):
            self.merchant(goods, shipped, tracking_no=goods.parcel(outbound=True), carrier="SF")
        self.settle(CaseState.SHIPPED_TO_BUYER, *outbound, why="the shipments")

        self.step(
            32,
            f"Case {preorder.case_id}'s buyer enters a bank account in the app "
            "(buyer.bank_account_provided).",
        )
        account = {"holder": "Li Wei", "bank": "ICBC", "account_no": "6222020200112233"}
        self.buyer(preorder, "bank_account_provided", **account)
        self.settle(CaseState.REFUNDED, preorder, why="the worker to pay the bank transfer")
        self.aside(
            f"case {preorder.case_id}: the worker paid ¥458.00 by bank transfer to …2233"
            f"{self.reference(preorder)}"
        )

        self.step(44, "The carrier delivers the phone and the headphones to the buyer.")
        for goods in outbound:
            self.carrier(goods, "parcel.delivered", goods.parcel(outbound=True))
        self.settle(CaseState.DELIVERED_TO_BUYER, *outbound, why="the outbound deliveries")

        self.step(
            45,
            f"Case {phone.case_id}'s buyer confirms the new phone works "
            "(buyer.delivery_confirmed).",
        )
        self.buyer(phone, "delivery_confirmed")
        self.settle(CaseState.EXCHANGED, phone, why="the buyer's confirmation")

        # Nobody acts any more: the clock jumps past each deadline and beat's sweep fires it.
        self.step(
            idle,
            f"48 h pass since case {idle.case_id} was submitted and the merchant never reviewed "
            "it: the review timer approves it.",
        )
        self.expect(CaseState.PICKUP, idle, why="the auto-approval and the pickup booking")
        self.aside("auto-approved by the timer sweep; the worker booked a courier pickup")
        self.step(
            idle,
            f"A week passes and case {idle.case_id}'s buyer never hands the parcel over: the "
            "return window closes the case.",
        )
        self.expect(CaseState.CLOSED, idle, why="the return window to close the case")
        self.step(
            headphones,
            f"10 days after delivery, case {headphones.case_id}'s buyer has not confirmed the "
            "repair: the confirmation timer does.",
        )
        self.expect(CaseState.REPAIRED, headphones, why="the confirmation timer")
        self.say("Every case has ended.")
        jacket.note = f"paid once by the worker{self.paid(jacket)}; duplicate event applied once"
        phone.note = "replacement confirmed by the buyer"
        headphones.note = "confirmed by the buyer_confirmation timer"
        preorder.note = f"bank transfer to …2233, paid once by the worker{self.paid(preorder)}"
        idle.note = "auto-approved after 48 h, closed after 7 days"
        late.note = f"rule {late.refusal.rule}" if late.refusal else ""


def run(
    folder: Path = DEMO_DIR, console: Console | None = None, api_port: int = API_PORT
) -> dict[str, Any]:
    """Play the live demo in ``folder`` with the API on ``api_port``; print it if ``console``;
    its JSON. Nothing starts if the port is taken; once started, the worker is always stopped."""
    started = time.monotonic()
    check_api_port(api_port)  # before ``prepare`` wipes the previous run's folder
    folder = prepare(folder)
    worker = start_worker(folder, api_port)
    api_url = f"http://{API_HOST}:{api_port}"
    pid_file = folder / "worker.pid"
    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        pid_file.write_text(f"{worker.start().pid}\n")
        demo = LiveDemo(folder, worker, console, api_url)
        outcomes = demo.play()
    except DemoFailed:
        # Beat's ticks would drown everything else.
        tail = worker.tail(skip=("aftersales.sweep_timers", "aftersales.relay_outbox"))
        if tail:
            print(f"--- last lines of {worker.log} ---\n{tail}", file=sys.stderr)
        raise
    finally:
        worker.stop(STOP_GRACE_S)  # SIGTERM: Celery's warm shutdown, which stops beat too
        pid_file.unlink(missing_ok=True)
        signal.signal(signal.SIGTERM, previous)
    if console is not None:
        how = "warm shutdown (SIGTERM)" if worker.stopped_by == "sigterm" else "SIGKILL"
        console.print(
            f"\nworker pid {worker.pid} stopped: {how}, exit code {worker.returncode}; "
            f"its log is {worker.log}"
        )
        console.print()
        console.print(summary_table(outcomes))
    return {
        "outcomes": [outcome.as_json() for outcome in outcomes],
        "events": [event | {"status": demo.results.get(task)} for task, event in demo.sent],
        "worker": {
            "pid": worker.pid,
            "exit_code": worker.returncode,
            "stopped_by": worker.stopped_by,
        },
        "folder": str(folder),
        "api": api_url,
        "seconds": round(time.monotonic() - started, 1),
    }
