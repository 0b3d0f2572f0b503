"""The live demo's stage: the run's folder, ``aftersales run`` in a child process, and what the
outside world does to it (submissions, events through the broker, the shared clock), with the
screen that follows the cases from the database. The story itself is ``entrypoints.live_demo``.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from types import FrameType
from typing import Any
from zoneinfo import ZoneInfo

from rich import box
from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.table import Table
from rich.text import Text

from adapters.fake_gateways import build_fake_gateways
from config.settings import (
    BrokerSettings,
    DatabaseSettings,
    FakeGatewaySettings,
    Settings,
    WorkerSettings,
    sqlite_url,
)
from entrypoints import composition, render, views
from entrypoints.demo import BUYER, MERCHANT, START, Outcome
from entrypoints.processes import ChildProcess
from tasks.app import create_app
from tasks.kick import RELAY_TASK
from tasks.producer import INGEST_TASK, make_envelope
from workflow.clock import FileClock
from workflow.errors import PolicyRefusal
from workflow.model import RefundRoute, TransitionRecord
from workflow.orders_service import OrderService
from workflow.service import CaseView
from workflow.states import CaseState

#: The demo's folder, relative to the directory it runs in; deleted and recreated on each run.
DEMO_DIR = Path("var") / "demo-live"

#: Beat asks for a sweep every 0.2 s, so a timer fires within a fraction of a second of the clock
#: passing its deadline. Given to the worker as ``AFTERSALES_*`` variables.
WORKER_TUNING: dict[str, float] = {
    "timer_sweep_interval_s": 0.2,
    "outbox_relay_interval_s": 0.5,
    "broker_polling_interval_s": 0.05,
}
#: The fake remotes answer at once and never fail: this demo shows the happy paths.
_FAKES = ("carrier", "payment", "shipper", "notifier")

#: Upper bounds of the waits; a healthy run needs a small fraction of each.
READY_TIMEOUT_S = 90.0
STEP_TIMEOUT_S = 30.0
STOP_GRACE_S = 20.0
POLL_S = 0.1
#: On a terminal, the pause before each narrated step (and half of it after).
TERMINAL_PACE_S = 1.5
#: From this many columns the live table also names each case's scenario.
WIDE = 130

#: The line celery logs when an ingest task ends; its result is the ``IngestResult`` status.
_INGESTED = re.compile(
    r"Task aftersales\.ingest_event\[(?P<id>[^\]]+)\] "
    r"(?:succeeded in [^:]*: '(?P<status>[a-z_]+)'|(?P<failure>raised .*))"
)
#: Log lines left out of the tail shown after a failure: beat's ticks drown everything else.
LOG_NOISE = ("aftersales.sweep_timers", "aftersales.relay_outbox")
#: Event ids as each producer might number them: ``sf-00012``, ``mp-00003``.
_EVENT_PREFIX = {"sf-express": "sf", "merchant-portal": "mp", "buyer-app": "app"}


class DemoFailed(Exception):
    """The live demo could not go on: the worker did not start, or a case did not move."""


# == the run's folder and its worker ===============================================================


def _settings(folder: Path) -> Settings:
    """Explicit values, not the environment: the embedded broker and the default policy."""
    return Settings(
        database=DatabaseSettings(url=sqlite_url(folder / "aftersales.db")),
        policy_file=None,
        broker=BrokerSettings(
            url=None,
            key_prefix="",
            polling_interval_s=WORKER_TUNING["broker_polling_interval_s"],
        ),
        clock_file=folder / "clock",
        worker=WorkerSettings(
            ping_dir=folder / "worker-pings",
            timer_sweep_interval_s=WORKER_TUNING["timer_sweep_interval_s"],
            outbox_relay_interval_s=WORKER_TUNING["outbox_relay_interval_s"],
        ),
    )


def _worker_env(folder: Path) -> dict[str, str]:
    """The worker's environment: ours without any ``AFTERSALES_*``, plus the demo's."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("AFTERSALES_")}
    env["AFTERSALES_DATABASE_URL"] = _settings(folder).database.url
    env["AFTERSALES_CLOCK_FILE"] = str(folder / "clock")
    for name, value in WORKER_TUNING.items():
        env[f"AFTERSALES_{name.upper()}"] = str(value)
    for fake in _FAKES:
        for knob in ("latency_ms", "failure_rate", "timeout_rate"):
            env[f"AFTERSALES_FAKE_{fake.upper()}_{knob.upper()}"] = "0"
    env["PYTHONUNBUFFERED"] = "1"  # the demo follows events in the log as they are written
    return env


def prepare(folder: Path) -> Path:
    """A fresh folder: the database at the newest schema and the clock at ``START``."""
    folder = folder.expanduser().resolve()
    running = _worker_still_running(folder / "worker.pid")
    if running is not None:
        raise DemoFailed(
            f"a live demo worker (pid {running}) still runs on {folder}; stop it first "
            f"(kill {running})"
        )
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    composition.recreate_embedded_database(_settings(folder))
    FileClock(str(folder / "clock")).set(START)
    return folder


def _worker_still_running(pid_file: Path) -> int | None:
    """The pid of a previous run's worker that is still alive (its demo was killed)."""
    try:
        pid = int(pid_file.read_text().strip())
    except (OSError, ValueError):
        return None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None
    except PermissionError:
        return pid
    with contextlib.suppress(OSError):
        text = Path(f"/proc/{pid}/cmdline").read_bytes()
        if b"aftersales" not in text and b"entrypoints.cli" not in text:
            return None  # the pid was reused by something else
    return pid


def worker_process(folder: Path) -> ChildProcess:
    """``aftersales run`` (the console script beside this Python, else the module)."""
    script = Path(sys.executable).with_name("aftersales")
    command = [str(script)] if script.exists() else [sys.executable, "-m", "entrypoints.cli"]
    command += ["run", "--concurrency", "2", "--loglevel", "INFO"]
    return ChildProcess(
        command, folder / "worker.log", env=_worker_env(folder), die_with_parent=True
    )


@contextlib.contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """A SIGTERM to the demo unwinds like Ctrl-C, so the worker is stopped on the way out."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


# == the story's cast ==============================================================================


@dataclass(eq=False)
class Sample:
    """One sample case: a row of the live table and, at the end, of the summary."""

    number: int
    title: str
    label: str
    case_type: str
    case_id: int | None = None
    note: str = ""
    refusal: PolicyRefusal | None = None

    @property
    def id(self) -> int:
        if self.case_id is None:
            raise DemoFailed(f"sample {self.number} has no case")
        return self.case_id

    @property
    def order_id(self) -> str:
        return f"o-live-{self.number:04d}"

    @property
    def back(self) -> str:
        """The tracking number of the return parcel."""
        return f"SF7{self.number:08d}"

    @property
    def out(self) -> str:
        """The tracking number of the replacement or repaired goods on their way to the buyer."""
        return f"SF8{self.number:08d}"


@dataclass(frozen=True)
class SentEvent:
    task_id: str
    sample: Sample
    envelope: dict[str, Any]


def merchant_data(**data: Any) -> dict[str, Any]:
    return {"merchant_id": MERCHANT.id, **data}


def buyer_data(**data: Any) -> dict[str, Any]:
    return {"buyer_id": BUYER.id, **data}


def case_ids(samples: Iterable[Sample]) -> str:
    return ", ".join(str(sample.case_id) for sample in samples)


# == the demo ======================================================================================


class Stage:
    """Drives the running worker and shows what it does, read back from the database."""

    def __init__(
        self, folder: Path, worker: ChildProcess, console: Console | None, pace: float
    ) -> None:
        self.folder = folder
        self.worker = worker
        self.console = console
        self.pace = pace
        self.settings = _settings(folder)
        self.clock = FileClock(str(folder / "clock"))
        # Events go through an app with the worker's broker settings (the embedded broker has
        # no URL of its own): the same ``send_task(INGEST_TASK, ...)`` producers make.
        self.broker = create_app(self.settings)
        self.service = composition.build_service(
            self.settings, self.clock, outbox_written=lambda: self.broker.send_task(RELAY_TASK)
        )
        self.zone = ZoneInfo(self.service.policy.timezone)
        self.samples: list[Sample] = []
        self.sent: list[SentEvent] = []
        self.results: dict[str, str] = {}  # ingest task id -> its status, from the worker's log
        self._views: dict[int, CaseView] = {}
        self._last: dict[int, TransitionRecord] = {}
        self._checked = 0  # sent[:_checked] have been waited for by _ingested
        self._numbered = 0  # events made (a repeated one is sent again under its number)
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
        for sample in self.samples:
            if sample.case_id is None:
                continue
            view = self.service.get(sample.case_id)
            seen = self._views.get(sample.case_id)
            self._views[sample.case_id] = view
            if seen is not None and seen.case.version == view.case.version:
                continue
            shown = self._last[sample.case_id].seq if sample.case_id in self._last else 0
            history = self.service.history(sample.case_id)
            for record in history:
                if record.seq > shown:
                    self.print(self.transition_line(sample, record))
            if history:
                self._last[sample.case_id] = history[-1]
        if self.live is not None:
            self.live.update(self.screen(), refresh=True)

    def wait(
        self, what: str, condition: Callable[[], bool], timeout: float = STEP_TIMEOUT_S
    ) -> None:
        deadline = time.monotonic() + timeout
        while True:
            self.poll()
            if condition():
                return
            if not self.worker.alive():
                raise DemoFailed(
                    f"the worker exited (code {self.worker.returncode}) while waiting for {what}"
                )
            if time.monotonic() > deadline:
                raise DemoFailed(f"timed out after {timeout:.0f} s waiting for {what}")
            time.sleep(POLL_S)

    def pause(self, seconds: float) -> None:
        """Let people read (terminal only); the table keeps refreshing meanwhile."""
        until = time.monotonic() + seconds
        while time.monotonic() < until:
            self.poll()
            time.sleep(POLL_S)

    def state(self, sample: Sample) -> CaseState | None:
        view = self._views.get(sample.case_id) if sample.case_id is not None else None
        return view.case.state if view is not None else None

    def expect(self, state: CaseState, *samples: Sample, why: str) -> None:
        """Wait until every one of ``samples`` is in ``state``."""
        try:
            self.wait(why, lambda: all(self.state(sample) is state for sample in samples))
        except DemoFailed as error:
            now = ", ".join(
                f"case {x.case_id} is {getattr(self.state(x), 'value', '?')}" for x in samples
            )
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

    def transition_line(self, sample: Sample, record: TransitionRecord) -> Text:
        line = Text(f"    case {sample.case_id} ", style="dim")
        line.append_text(render.state_text(record.from_state))
        line.append(" → ")
        line.append_text(render.state_text(record.to_state))
        line.append(f"  {record.trigger} by {record.actor}", style="dim")
        return line

    def screen(self) -> RenderableType:
        clock = views.local(self.clock.now(), self.zone)
        header = Text.assemble(
            ("after-sales, live", "bold"),
            f" · simulated clock {clock} · worker pid {self.worker.pid} (aftersales run) · ",
            (str(self.folder), "dim"),
        )
        return Group(header, self.case_table())

    def case_table(self) -> Table:
        """Case, type, state, deadline, last transition, refund; the scenario when it fits."""
        now = self.clock.now()
        wide = (self.console.width if self.console is not None else WIDE) >= WIDE
        table = Table(box=box.SIMPLE_HEAD, pad_edge=False)
        table.add_column("case", justify="right", no_wrap=True)
        if wide:
            table.add_column("scenario")
        table.add_column("type", no_wrap=True)
        table.add_column("state", no_wrap=True)
        table.add_column("deadline")
        table.add_column("last transition")
        table.add_column("refund", justify="right")
        for sample in self.samples:
            label = [sample.label] if wide else []
            view = self._views.get(sample.case_id) if sample.case_id is not None else None
            if view is None:
                rule = sample.refusal.rule if sample.refusal is not None else ""
                refused = Text("refused", style="bold red") if sample.refusal else Text("…")
                table.add_row("—", *label, sample.case_type, refused, "", f"rule {rule}", "")
                continue
            case = view.case
            deadline = Text("—", style="dim")
            if view.deadline is not None:
                due = view.deadline.due_at
                deadline = Text(
                    f"{views.relative(due, now)} → {view.deadline.trigger}",
                    style="bold red" if due <= now else "",
                )
            record = self._last.get(case.id or 0)
            last = Text()
            if record is not None:
                last.append(f"{record.at.astimezone(self.zone):%m-%d %H:%M} ", style="dim")
                last.append(record.trigger)
                last.append(f" ({record.actor.partition(':')[0]})", style="dim")
            refund = ""
            if case.refund_route is RefundRoute.BANK_TRANSFER:
                refund = f"{views.yuan(case.refund_amount)} by bank transfer"
            elif case.refund_route is not None:
                refund = f"{views.yuan(case.refund_amount)} to {case.payment.channel}"
            state = render.state_text(case.state)
            table.add_row(str(case.id), *label, case.type.value, state, deadline, last, refund)
        return table

    # -- what the outside world does --------------------------------------------------------------
    def submit(
        self,
        sample: Sample,
        category: str,
        reason: str,
        paid_days_ago: float,
        delivered_days_ago: float | None,
        price: int,
        gifts: list[dict[str, Any]] | None = None,
        description: str = "",
    ) -> None:
        """Submit an application dated relative to the clock, as the buyer's app would."""
        now = self.clock.now()
        delivered = None if delivered_days_ago is None else now - timedelta(days=delivered_days_ago)
        application = {
            "type": sample.case_type,
            "order_id": sample.order_id,
            "buyer_id": BUYER.id,
            "merchant_id": MERCHANT.id,
            "category": category,
            "reason": reason,
            "description": description,
            "payment": {
                "channel": "wechat_pay",
                "amount": price,
                "paid_at": (now - timedelta(days=paid_days_ago)).isoformat(),
            },
            "delivered_at": delivered.isoformat() if delivered else None,
            "items": [{"sku": f"sku-{sample.number}", "quantity": 1, "unit_price": price}],
            "gifts": gifts or [],
        }
        # The order system imports the order first (issue 13: the facts come from it).
        service = self.service
        OrderService(service.uow_factory, service.clock, service.policy).import_for([application])
        sample.case_id = service.submit(application, BUYER).case.id

    def event(
        self,
        sample: Sample,
        source: str,
        event_type: str,
        data: dict[str, Any] | None = None,
        *,
        parcel: str | None = None,
    ) -> dict[str, Any]:
        """Queue one event: a carrier names the order and parcel, front ends name the case."""
        self._numbered += 1
        envelope = make_envelope(
            source,
            event_type,
            case_id=None if parcel else sample.case_id,
            order_id=sample.order_id if parcel else None,
            tracking_no=parcel,
            data=data,
            event_id=f"{_EVENT_PREFIX.get(source, source)}-{self._numbered:05d}",
            occurred_at=self.clock.now(),
        )
        self.send(sample, envelope)
        return envelope

    def send(self, sample: Sample, envelope: dict[str, Any]) -> None:
        result = self.broker.send_task(INGEST_TASK, args=[envelope])
        self.sent.append(SentEvent(str(result.id), sample, envelope))

    def ingested(self, expected: dict[str, int] | None = None) -> list[str]:
        """Wait until the worker has ingested every queued event; their statuses, in order.
        Every event must apply unless ``expected`` counts other statuses (the duplicate)."""
        waiting = self.sent[self._checked :]
        self._checked = len(self.sent)
        self.wait(
            f"the worker to ingest {len(waiting)} event(s)",
            lambda: all(sent.task_id in self.results for sent in waiting),
        )
        statuses = [self.results[sent.task_id] for sent in waiting]
        wanted = dict(expected or {"applied": len(waiting)})
        counted = {status: statuses.count(status) for status in set(statuses)}
        if counted != wanted:
            letters = composition.build_event_service(self.settings, self.service).dead_letters()
            told = "; ".join(f"{d.event_id}: {d.reason}" for d in letters)
            raise DemoFailed(
                f"events ended {counted}, expected {wanted}"
                + (f"; dead letters: {told}" if told else "")
            )
        return statuses

    def at(self, *, hours: float) -> None:
        """Move the shared clock to ``START + hours`` (never backwards)."""
        target = START + timedelta(hours=hours)
        if target > self.clock.now():
            self.clock.set(target)

    def past_deadline_of(self, sample: Sample) -> None:
        """Move the clock an hour past the case's pending deadline, for beat's sweep to fire."""
        deadline = self.service.get(sample.id).deadline
        if deadline is None:
            raise DemoFailed(f"case {sample.case_id} has no pending deadline")
        self.clock.set(deadline.due_at + timedelta(hours=1))

    def wait_ready(self) -> None:
        """Send ``aftersales.ping`` and wait for its proof: the worker consumes the broker."""
        token = f"live-demo-{os.getpid()}"
        self.broker.send_task("aftersales.ping", args=[token])
        if self.console is not None:
            self.console.print(
                f"[bold]after-sales live demo[/]: started `aftersales run` (pid {self.worker.pid})"
                f" on {self.folder}; waiting for it to take tasks…"
            )
        proof = self.folder / "worker-pings" / token
        self.wait("the worker to run a ping", proof.exists, READY_TIMEOUT_S)
        if self.console is not None:
            self.console.print(
                "worker ready: it consumes the embedded broker, beat sweeps timers every "
                f"{WORKER_TUNING['timer_sweep_interval_s']} s, and every process reads the "
                f"clock from {self.folder / 'clock'}"
            )

    # -- the summary ------------------------------------------------------------------------------
    def reference(self, sample: Sample) -> str:
        for record in reversed(self.service.history(sample.id)):
            if record.trigger == "confirm_refund":
                return f" (reference {record.data.get('reference')})"
        return ""

    def paid(self, sample: Sample) -> str:
        """What the fake payment gateway's ledger holds for the case: one payment."""
        gateways = build_fake_gateways(
            FakeGatewaySettings(ledger_url=None), self.settings.database.url, self.clock
        )
        count = gateways.payments.payments_count(sample.id)
        if count != 1:
            raise DemoFailed(f"case {sample.case_id} was paid {count} times")
        return f" ({views.yuan(gateways.payments.amount_paid(sample.id))})"

    def outcomes(self) -> list[Outcome]:
        outcomes = []
        for sample in self.samples:
            if sample.case_id is None:
                outcomes.append(
                    Outcome(sample.title, sample.case_type, None, "refused", None, sample.note)
                )
                continue
            case = self.service.get(sample.case_id).case
            refunded = case.refund_amount if case.state is CaseState.REFUNDED else None
            outcomes.append(
                Outcome(
                    sample.title, case.type.value, case.id, case.state.value, refunded, sample.note
                )
            )
        return outcomes

    def events_json(self) -> list[dict[str, Any]]:
        return [
            {
                "event_id": sent.envelope["event_id"],
                "source": sent.envelope["source"],
                "type": sent.envelope["type"],
                "case_id": sent.sample.case_id,
                "status": self.results.get(sent.task_id),
            }
            for sent in self.sent
        ]
