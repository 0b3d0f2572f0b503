"""The live demo (``aftersales demo --live``, ``make run``): the real service moving cases.

It starts ``aftersales run`` (worker and beat on the embedded broker and SQLite, files in
``var/demo-live/``) and then does only what the outside world does (``entrypoints.live_stage``):
buyers submit, merchants, buyers and the carrier send events through the broker, and time passes
on the shared clock file. Pauses are for people to follow, on a terminal only.
"""

from __future__ import annotations

import contextlib
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

from rich.console import Console
from rich.live import Live

from entrypoints.demo import Outcome, summary_table
from entrypoints.live_stage import (
    DEMO_DIR,
    LOG_NOISE,
    STOP_GRACE_S,
    TERMINAL_PACE_S,
    DemoFailed,
    Sample,
    Stage,
    buyer_data,
    case_ids,
    merchant_data,
    prepare,
    sigterm_as_interrupt,
    worker_process,
)
from workflow.errors import PolicyRefusal
from workflow.states import CaseState

__all__ = ["DEMO_DIR", "DemoFailed", "LiveResult", "run"]


class Cast(NamedTuple):
    jacket: Sample
    phone: Sample
    headphones: Sample
    preorder: Sample
    idle: Sample
    late: Sample

    @property
    def cases(self) -> tuple[Sample, ...]:
        """The five that become cases (the last is refused)."""
        return self[:5]

    @property
    def returns(self) -> tuple[Sample, Sample, Sample]:
        """The three whose goods go back to the merchant."""
        return self.jacket, self.phone, self.headphones


@dataclass
class LiveResult:
    outcomes: list[Outcome]
    events: list[dict[str, Any]]
    worker_pid: int
    worker_exit: int | None
    worker_stopped_by: str | None
    folder: Path
    seconds: float

    def as_json(self) -> dict[str, Any]:
        return {
            "outcomes": [outcome.as_json() for outcome in self.outcomes],
            "events": self.events,
            "worker": {
                "pid": self.worker_pid,
                "exit_code": self.worker_exit,
                "stopped_by": self.worker_stopped_by,
            },
            "folder": str(self.folder),
            "seconds": round(self.seconds, 1),
        }


class LiveDemo(Stage):
    """The story, played on the stage."""

    # -- the play ---------------------------------------------------------------------------------
    def play(self) -> list[Outcome]:
        self.wait_ready()
        live = None
        if self.console is not None and self.console.is_terminal:
            live = Live(self.screen(), console=self.console, auto_refresh=False)
        with live if live is not None else contextlib.nullcontext():
            self.live = live
            try:
                self._story()
            finally:
                self.poll()
                self.live = None
        if self.console is not None and live is None:
            self.console.print()
            self.console.print(self.screen())
        return self.outcomes()

    def _story(self) -> None:
        def sample(title: str, label: str, case_type: str = "return_refund") -> Sample:
            self.samples.append(Sample(len(self.samples) + 1, title, label, case_type))
            return self.samples[-1]

        cast = Cast(
            sample("Return and refund, a gift missing", "jacket, scarf missing"),
            sample("Exchange of a faulty phone", "phone, speaker dead", "exchange"),
            sample("Warranty repair, auto-confirmed", "headphones repair", "repair"),
            sample("Refund only, past the WeChat Pay window", "pre-order lost", "refund_only"),
            sample("Nobody acts: auto-approve, then closed", "nobody acts"),
            sample("Refused: no-reason return on day 9", "day-9 no-reason"),
        )
        self._apply(cast)
        self._review(cast)
        self._return_leg(cast)
        self._inspection(cast)
        self._outcomes_by_events(cast)
        self._timers(cast)
        self.say("Every case has ended.")
        jacket, phone, headphones, preorder, idle, late = cast
        jacket.note = f"paid once by the worker{self.paid(jacket)}; duplicate event applied once"
        phone.note = "replacement confirmed by the buyer"
        headphones.note = "confirmed by the buyer_confirmation timer"
        preorder.note = f"bank transfer to …2233, paid once by the worker{self.paid(preorder)}"
        idle.note = "auto-approved after 48 h, closed after 7 days"
        late.note = f"rule {late.refusal.rule}" if late.refusal else ""

    def _apply(self, cast: Cast) -> None:
        """Day 1, 10:00: five applications, and a sixth the policy refuses."""
        self.say("Six buyers apply for after-sales (the buyer's app calls CaseService.submit).")
        scarf = {"sku": "gift-scarf", "quantity": 1, "value": 500}
        self.submit(
            cast.jacket, "clothing", "no_reason", 5, 2, 19_900, gifts=[scarf], description="small"
        )
        self.submit(cast.phone, "phone", "quality_issue", 16, 12, 329_900, description="mute")
        self.submit(cast.headphones, "electronics", "quality_issue", 155, 150, 89_900)
        self.submit(cast.preorder, "home", "not_received", 380, None, 45_800)
        self.submit(cast.idle, "home", "no_reason", 4, 1, 12_800)
        try:
            self.submit(cast.late, "clothing", "no_reason", 12, 9, 25_900)
        except PolicyRefusal as refusal:
            cast.late.refusal = refusal
            self.aside(f"the sixth is refused, no case is created: {refusal}", style="red")
        else:
            raise DemoFailed("the day-9 no-reason return should have been refused")
        self.expect(CaseState.SUBMITTED, *cast.cases, why="the five submissions")

    def _review(self, cast: Cast) -> None:
        self.at(hours=2)
        approved = (cast.jacket, cast.phone, cast.headphones, cast.preorder)
        self.say(
            f"The merchant approves cases {case_ids(approved)} on the merchant portal "
            f"(merchant.approved events); nobody looks at case {cast.idle.case_id}."
        )
        for sample in approved:
            self.event(sample, "merchant-portal", "merchant.approved", merchant_data())
        self.ingested()
        self.expect(CaseState.PICKUP, *cast.returns, why="the worker to book the courier pickups")
        self.expect(
            CaseState.AWAITING_BANK_ACCOUNT, cast.preorder, why="the pre-order's refund to start"
        )
        self.aside(
            "the worker booked the three courier pickups with the (fake) carrier; case "
            f"{cast.preorder.case_id} was paid 380 days ago, past WeChat Pay's 365-day refund "
            "window, so it waits for a bank account"
        )

    def _return_leg(self, cast: Cast) -> None:
        self.at(hours=6)
        self.say("The courier collects the three return parcels (parcel.picked_up, sf-express).")
        for sample in cast.returns:
            self.event(
                sample, "sf-express", "parcel.picked_up", {"carrier": "SF"}, parcel=sample.back
            )
        self.ingested()
        self.expect(CaseState.SHIPPED_BACK, *cast.returns, why="the pickups")

        self.at(hours=26)
        jacket = cast.jacket
        self.say(
            "Next day the carrier reports the return parcels delivered; its webhook fires twice "
            f"for case {jacket.case_id}'s parcel (the same event_id)."
        )
        delivered = self.event(jacket, "sf-express", "parcel.delivered", parcel=jacket.back)
        self.send(jacket, dict(delivered))
        for sample in (cast.phone, cast.headphones):
            self.event(sample, "sf-express", "parcel.delivered", parcel=sample.back)
        statuses = self.ingested({"applied": 3, "duplicate": 1})
        self.expect(CaseState.RETURN_DELIVERED, *cast.returns, why="the deliveries")
        history = self.service.history(jacket.id)
        moves = [record for record in history if record.trigger == "record_return_delivery"]
        self.aside(
            f"event {delivered['event_id']} twice → {statuses[0]}, {statuses[1]}: case "
            f"{jacket.case_id}'s history holds {len(moves)} record_return_delivery"
        )
        if len(moves) != 1:
            raise DemoFailed(f"the repeated delivery moved case {jacket.case_id} twice")

        self.at(hours=28)
        self.say("The merchant confirms receipt of the three parcels (merchant.receipt_confirmed).")
        for sample in cast.returns:
            self.event(sample, "merchant-portal", "merchant.receipt_confirmed", merchant_data())
        self.ingested()
        self.expect(CaseState.RECEIVED, *cast.returns, why="the receipts")

    def _inspection(self, cast: Cast) -> None:
        self.at(hours=30)
        self.say(
            "The merchant inspects: the jacket came back without its free scarf (−¥5.00); the "
            "phone's and the headphones' faults are confirmed (merchant.inspected)."
        )
        inspected = "merchant.inspected"
        missing = merchant_data(gifts_missing=["gift-scarf"])
        self.event(cast.jacket, "merchant-portal", inspected, missing)
        self.event(cast.phone, "merchant-portal", inspected, merchant_data(note="speaker fault"))
        self.event(cast.headphones, "merchant-portal", inspected, merchant_data(note="connector"))
        self.ingested()
        self.expect(CaseState.REFUNDED, cast.jacket, why="the worker to pay the jacket's refund")
        self.expect(CaseState.INSPECTED, cast.phone, cast.headphones, why="the inspections")
        self.aside(
            f"case {cast.jacket.case_id}: the inspection started the refund; the worker paid "
            f"it through the (fake) payment gateway{self.reference(cast.jacket)} → refunded"
        )

    def _outcomes_by_events(self, cast: Cast) -> None:
        phone, headphones, preorder = cast.phone, cast.headphones, cast.preorder
        self.at(hours=31)
        self.say("The merchant ships the replacement phone and the repaired headphones.")
        for sample, event_type in (
            (phone, "merchant.replacement_shipped"),
            (headphones, "merchant.repaired_shipped"),
        ):
            shipped = merchant_data(tracking_no=sample.out, carrier="SF")
            self.event(sample, "merchant-portal", event_type, shipped)
        self.ingested()
        self.expect(CaseState.SHIPPED_TO_BUYER, phone, headphones, why="the shipments")

        self.at(hours=32)
        self.say(
            f"Case {preorder.case_id}'s buyer enters a bank account in the app "
            "(buyer.bank_account_provided)."
        )
        account = {"holder": "Li Wei", "bank": "ICBC", "account_no": "6222020200112233"}
        self.event(preorder, "buyer-app", "buyer.bank_account_provided", buyer_data(**account))
        self.ingested()
        self.expect(CaseState.REFUNDED, preorder, why="the worker to pay the bank transfer")
        self.aside(
            f"case {preorder.case_id}: the worker paid ¥458.00 by bank transfer to …2233"
            f"{self.reference(preorder)}"
        )

        self.at(hours=44)
        self.say("The carrier delivers the phone and the headphones to the buyer.")
        for sample in (phone, headphones):
            self.event(sample, "sf-express", "parcel.delivered", parcel=sample.out)
        self.ingested()
        self.expect(CaseState.DELIVERED_TO_BUYER, phone, headphones, why="the outbound deliveries")

        self.at(hours=45)
        self.say(
            f"Case {phone.case_id}'s buyer confirms the new phone works (buyer.delivery_confirmed)."
        )
        self.event(phone, "buyer-app", "buyer.delivery_confirmed", buyer_data())
        self.ingested()
        self.expect(CaseState.EXCHANGED, phone, why="the buyer's confirmation")

    def _timers(self, cast: Cast) -> None:
        """Nobody acts any more: the clock jumps past each deadline and beat's sweep fires it."""
        idle, headphones = cast.idle, cast.headphones
        self.past_deadline_of(idle)
        self.say(
            f"48 h pass since case {idle.case_id} was submitted and the merchant never reviewed "
            "it: the review timer approves it."
        )
        self.expect(CaseState.PICKUP, idle, why="the auto-approval and the pickup booking")
        self.aside("auto-approved by the timer sweep; the worker booked a courier pickup")

        self.past_deadline_of(idle)
        self.say(
            f"A week passes and case {idle.case_id}'s buyer never hands the parcel over: the "
            "return window closes the case."
        )
        self.expect(CaseState.CLOSED, idle, why="the return window to close the case")

        self.past_deadline_of(headphones)
        self.say(
            f"10 days after delivery, case {headphones.case_id}'s buyer has not confirmed the "
            "repair: the confirmation timer does."
        )
        self.expect(CaseState.REPAIRED, headphones, why="the confirmation timer")


def run(
    folder: Path = DEMO_DIR, console: Console | None = None, pace: float | None = None
) -> LiveResult:
    """Play the live demo in ``folder``; print it if ``console``. The worker is always stopped.

    ``pace``: seconds to pause after each step; default 1.5 on a terminal, else none.
    """
    started = time.monotonic()
    if pace is None:
        pace = TERMINAL_PACE_S if console is not None and console.is_terminal else 0.0
    folder = prepare(folder)
    worker = worker_process(folder)
    pid_file = folder / "worker.pid"
    with sigterm_as_interrupt():
        try:
            pid_file.write_text(f"{worker.start().pid}\n")
            demo = LiveDemo(folder, worker, console, pace)
            outcomes = demo.play()
        except DemoFailed:
            tail = worker.tail(skip=LOG_NOISE)
            if tail:
                print(f"--- last lines of {worker.log} ---\n{tail}", file=sys.stderr)
            raise
        finally:
            # SIGTERM: Celery's warm shutdown, which stops beat too.
            worker.stop(STOP_GRACE_S)
            pid_file.unlink(missing_ok=True)
    if console is not None:
        how = "warm shutdown (SIGTERM)" if worker.stopped_by == "sigterm" else "SIGKILL"
        console.print(
            f"\nworker pid {worker.pid} stopped: {how}, exit code {worker.returncode}; "
            f"its log is {worker.log}"
        )
        console.print()
        console.print(summary_table(outcomes))
    return LiveResult(
        outcomes,
        demo.events_json(),
        worker.pid,
        worker.returncode,
        worker.stopped_by,
        folder,
        time.monotonic() - started,
    )
