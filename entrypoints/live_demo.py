"""The live demo (``aftersales demo --live``, ``make run``): the real service moving cases.

The scripted demo (``entrypoints/demo.py``) calls the service layer in-process on a fake clock.
This one starts ``aftersales run`` (worker and beat on the embedded broker and SQLite) as a child
process and then only does what the outside world does:

- buyers apply through ``CaseService.submit`` on the shared database (what the buyer's app does);
- merchants, buyers and the carrier act by *events*: envelopes made by
  ``tasks.producer.make_envelope`` and sent as the ``aftersales.ingest_event`` task through the
  broker the worker consumes;
- the worker books courier pickups and pays refunds itself (the fake carrier and payment gateway);
- time passes by writing the shared ``FileClock`` file, and beat's timer sweep fires what is due.

The table is read back from the database every ~0.1 s. Every wait polls for an effect (the ping's
proof file, the worker's log line for an event's task, a case's state) with a deadline; nothing
sleeps to synchronise. Pauses are added only on a terminal, so that people can follow.

Everything lives in ``var/demo-live/``, recreated on each run: ``aftersales.db``, ``clock``,
``broker/``, ``worker.log``, ``worker.pid`` (while the worker runs), beat's schedule.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from types import FrameType
from typing import Any, NamedTuple
from zoneinfo import ZoneInfo

from celery import Celery
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
from entrypoints.demo import BUYER, MERCHANT, START, Outcome, summary_table
from tasks.app import create_app
from tasks.kick import RELAY_TASK
from tasks.producer import INGEST_TASK, make_envelope
from workflow.clock import FileClock
from workflow.errors import PolicyRefusal
from workflow.model import RefundRoute, TransitionRecord
from workflow.service import CaseService, CaseView
from workflow.states import CaseState

#: The demo's folder, relative to the directory it runs in; deleted and recreated on each run.
DEMO_DIR = Path("var") / "demo-live"

#: The worker's ``WorkerSettings``: beat asks for a sweep every 0.2 s, so a timer fires within a
#: fraction of a second of the clock passing its deadline. Passed as ``AFTERSALES_*`` variables.
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
#: On a terminal, the pause before each narrated step (and half of it after), so that people can
#: follow; none when the output is a pipe or a file.
TERMINAL_PACE_S = 1.5
#: From this many columns the live table also names each case's scenario.
WIDE = 130

#: The line celery logs when an ingest task ends; its result is the ``IngestResult`` status.
_INGESTED = re.compile(
    r"Task aftersales\.ingest_event\[(?P<id>[^\]]+)\] "
    r"(?:succeeded in [^:]*: '(?P<status>[a-z_]+)'|(?P<failure>raised .*))"
)
#: Log lines left out of the tail shown after a failure: beat's ticks drown everything else.
_NOISE = ("aftersales.sweep_timers", "aftersales.relay_outbox")


class DemoFailed(Exception):
    """The live demo could not go on: the worker did not start, or a case did not move."""


# == the files of one run ==========================================================================


@dataclass(frozen=True)
class Layout:
    folder: Path

    @property
    def database(self) -> Path:
        return self.folder / "aftersales.db"

    @property
    def clock(self) -> Path:
        return self.folder / "clock"

    @property
    def log(self) -> Path:
        return self.folder / "worker.log"

    @property
    def pid_file(self) -> Path:
        return self.folder / "worker.pid"

    @property
    def pings(self) -> Path:
        # Where the worker's ``aftersales.ping`` writes (create_app's default: <var>/worker-pings).
        return self.folder / "worker-pings"

    def settings(self) -> Settings:
        """Explicit values, not the environment: the embedded broker and the default policy."""
        return Settings(
            database=DatabaseSettings(url=sqlite_url(self.database)),
            policy_file=None,
            broker=BrokerSettings(
                url=None,
                key_prefix="",
                polling_interval_s=WORKER_TUNING["broker_polling_interval_s"],
            ),
            clock_file=self.clock,
            worker=WorkerSettings(
                ping_dir=self.pings,
                timer_sweep_interval_s=WORKER_TUNING["timer_sweep_interval_s"],
                outbox_relay_interval_s=WORKER_TUNING["outbox_relay_interval_s"],
            ),
        )

    def worker_env(self) -> dict[str, str]:
        """The child's environment: ours without any ``AFTERSALES_*``, plus the demo's."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("AFTERSALES_")}
        env["AFTERSALES_DATABASE_URL"] = self.settings().database.url
        env["AFTERSALES_CLOCK_FILE"] = str(self.clock)
        for name, value in WORKER_TUNING.items():
            env[f"AFTERSALES_{name.upper()}"] = str(value)
        for fake in _FAKES:
            for knob in ("latency_ms", "failure_rate", "timeout_rate"):
                env[f"AFTERSALES_FAKE_{fake.upper()}_{knob.upper()}"] = "0"
        # Log lines reach the file as they are written: the demo reads them to follow events.
        env["PYTHONUNBUFFERED"] = "1"
        return env


def prepare(folder: Path) -> Layout:
    """A fresh folder: the database at the newest schema and the clock at ``START``."""
    layout = Layout(folder.expanduser().resolve())
    running = _worker_still_running(layout.pid_file)
    if running is not None:
        raise DemoFailed(
            f"a live demo worker (pid {running}) still runs on {folder}; stop it first "
            f"(kill {running})"
        )
    if layout.folder.exists():
        shutil.rmtree(layout.folder)
    layout.folder.mkdir(parents=True)
    composition.recreate_embedded_database(layout.settings())
    FileClock(str(layout.clock)).set(START)
    return layout


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
    cmdline = Path(f"/proc/{pid}/cmdline")
    with contextlib.suppress(OSError):
        text = cmdline.read_bytes()
        if b"aftersales" not in text and b"entrypoints.cli" not in text:
            return None  # the pid was reused by something else
    return pid


# == the child process =============================================================================


def _aftersales_command() -> list[str]:
    """The installed console script beside this Python, else the module."""
    script = Path(sys.executable).with_name("aftersales")
    return [str(script)] if script.exists() else [sys.executable, "-m", "entrypoints.cli"]


def _die_with_parent() -> None:  # pragma: no cover - runs in the child between fork and exec
    """Linux: have the kernel SIGTERM the worker should the demo die without stopping it."""
    with contextlib.suppress(Exception):
        libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
        pr_set_pdeathsig = 1
        libc.prctl(pr_set_pdeathsig, int(signal.SIGTERM), 0, 0, 0)


class WorkerProcess:
    """``aftersales run`` in its own session (Ctrl-C in the terminal reaches only the demo)."""

    def __init__(self, layout: Layout) -> None:
        self.layout = layout
        self.process: subprocess.Popen[bytes] | None = None
        #: How it ended: "sigterm" (warm shutdown) or "sigkill" (it did not stop in time).
        self.stopped_by: str | None = None

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def start(self) -> None:
        command = [*_aftersales_command(), "run", "--concurrency", "2", "--loglevel", "INFO"]
        with self.layout.log.open("wb") as out:
            self.process = subprocess.Popen(
                command,
                env=self.layout.worker_env(),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=_die_with_parent if sys.platform == "linux" else None,
            )
        self.layout.pid_file.write_text(f"{self.process.pid}\n")

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def returncode(self) -> int | None:
        return None if self.process is None else self.process.returncode

    def stop(self) -> None:
        """SIGTERM (Celery's warm shutdown, which stops beat too), then SIGKILL to the group."""
        process = self.process
        if process is None:
            return
        if process.poll() is None:
            self.stopped_by = "sigterm"
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=STOP_GRACE_S)
            except (subprocess.TimeoutExpired, KeyboardInterrupt):
                self.stopped_by = "sigkill"
        # Whatever of its group is left (beat, had the worker been killed) goes too.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()
        self.layout.pid_file.unlink(missing_ok=True)

    def log_tail(self, lines: int = 40) -> str:
        try:
            text = self.layout.log.read_text(errors="replace")
        except OSError:
            return ""
        kept = [line for line in text.splitlines() if not any(n in line for n in _NOISE)]
        return "\n".join(kept[-lines:])


class WorkerLog:
    """Follows the worker's log for the outcome of each ingest task, by task id."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._offset = 0
        self.results: dict[str, str] = {}

    def read(self) -> None:
        try:
            with self.path.open("rb") as handle:
                handle.seek(self._offset)
                chunk = handle.read()
        except FileNotFoundError:
            return
        complete = chunk.rfind(b"\n") + 1  # a line still being written is read next time
        self._offset += complete
        for line in chunk[:complete].decode(errors="replace").splitlines():
            match = _INGESTED.search(line)
            if match:
                self.results[match["id"]] = match["status"] or f"error: {match['failure']}"


@contextlib.contextmanager
def _sigterm_as_interrupt() -> Iterator[None]:
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


# == the story =====================================================================================


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


@dataclass(frozen=True)
class SentEvent:
    task_id: str
    sample: Sample
    envelope: dict[str, Any]


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


class LiveDemo:
    """Drives the running worker and shows what it does, from the database."""

    def __init__(
        self, layout: Layout, worker: WorkerProcess, console: Console | None, pace: float
    ) -> None:
        self.layout = layout
        self.worker = worker
        self.console = console
        self.pace = pace
        self.settings = layout.settings()
        self.clock = FileClock(str(layout.clock))
        # The producer side of the broker the worker consumes. ``tasks.producer.publish_event``
        # takes only a URL, and the embedded broker has none on its own (its folder is a
        # transport option), so events go through an app with the worker's broker settings:
        # the same ``send_task(INGEST_TASK, args=[envelope])`` the helper makes.
        self.broker: Celery = create_app(self.settings)
        self.service: CaseService = composition.build_service(
            self.settings, self.clock, outbox_written=self._kick_relay
        )
        self.zone = ZoneInfo(self.service.policy.timezone)
        self.log = WorkerLog(layout.log)
        self.samples: list[Sample] = []
        self.sent: list[SentEvent] = []
        self._views: dict[int, CaseView] = {}
        self._last: dict[int, TransitionRecord] = {}
        self._shown_seq: dict[int, int] = {}
        self._event_no = 0
        #: ``sent[:_checked]`` have been waited for by ``_ingested``.
        self._checked = 0
        self._live: Live | None = None

    # -- plumbing ------------------------------------------------------------------------------
    def _kick_relay(self) -> None:
        """Ask the worker to relay the outbox rows our submissions wrote (as workers do)."""
        self.broker.send_task(RELAY_TASK)

    def _print(self, renderable: RenderableType) -> None:
        if self._live is not None:
            self._live.console.print(renderable)
        elif self.console is not None:
            self.console.print(renderable)

    def _poll(self) -> None:
        """Read the worker's log and every case; print new transitions; redraw the table."""
        self.log.read()
        for sample in self.samples:
            if sample.case_id is None:
                continue
            view = self.service.get(sample.case_id)
            seen = self._views.get(sample.case_id)
            self._views[sample.case_id] = view
            if seen is not None and seen.case.version == view.case.version:
                continue
            history = self.service.history(sample.case_id)
            shown = self._shown_seq.get(sample.case_id, 0)
            for record in history:
                if record.seq > shown:
                    self._print(self._transition_line(sample, record))
            if history:
                self._last[sample.case_id] = history[-1]
                self._shown_seq[sample.case_id] = history[-1].seq
        if self._live is not None:
            self._live.update(self._screen(), refresh=True)

    def _wait(
        self, what: str, condition: Callable[[], bool], timeout: float = STEP_TIMEOUT_S
    ) -> None:
        deadline = time.monotonic() + timeout
        while True:
            self._poll()
            if condition():
                return
            if not self.worker.alive():
                raise DemoFailed(
                    f"the worker exited (code {self.worker.returncode()}) while waiting for {what}"
                )
            if time.monotonic() > deadline:
                raise DemoFailed(f"timed out after {timeout:.0f} s waiting for {what}")
            time.sleep(POLL_S)

    def _pause(self, seconds: float) -> None:
        """Let people read (terminal only); the table keeps refreshing meanwhile."""
        until = time.monotonic() + seconds
        while time.monotonic() < until:
            self._poll()
            time.sleep(POLL_S)

    def _state(self, sample: Sample) -> CaseState | None:
        view = self._views.get(sample.case_id) if sample.case_id is not None else None
        return view.case.state if view is not None else None

    def _expect(self, state: CaseState, *samples: Sample, why: str) -> None:
        """Wait until every one of ``samples`` is in ``state``."""

        def reached() -> bool:
            return all(self._state(sample) is state for sample in samples)

        try:
            self._wait(why, reached)
        except DemoFailed as error:
            now = ", ".join(
                f"case {x.case_id} is {getattr(self._state(x), 'value', '?')}" for x in samples
            )
            raise DemoFailed(f"{error} (expected {state.value}; {now})") from None

    # -- narration -----------------------------------------------------------------------------
    def _say(self, text: str) -> None:
        """A step's narration: after a pause to look at the last step's result, before it acts."""
        self._pause(self.pace)
        now = views.local_time(self.clock.now(), self.zone)
        line = Text.assemble(("\n" + now + "  ", "bold magenta"), (text, "bold"))
        self._print(line)
        self._pause(self.pace / 2)

    def _aside(self, text: str, style: str = "italic") -> None:
        self._print(Text("    " + text, style=style))

    def _transition_line(self, sample: Sample, record: TransitionRecord) -> Text:
        line = Text(f"    case {sample.case_id} ", style="dim")
        line.append_text(render.state_text(record.from_state))
        line.append(" → ")
        line.append_text(render.state_text(record.to_state))
        line.append(f"  {record.trigger} by {record.actor}", style="dim")
        return line

    def _screen(self) -> RenderableType:
        clock = views.local(self.clock.now(), self.zone)
        header = Text.assemble(
            ("after-sales, live", "bold"),
            f" · simulated clock {clock} · worker pid {self.worker.pid} (aftersales run) · ",
            (str(self.layout.folder), "dim"),
        )
        return Group(header, self.case_table())

    def case_table(self) -> Table:
        """Case, type, state, deadline, last transition, refund; the scenario when it fits."""
        now = self.clock.now()
        width = self.console.width if self.console is not None else WIDE
        wide = width >= WIDE
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
            table.add_row(
                str(case.id),
                *label,
                case.type.value,
                render.state_text(case.state),
                deadline,
                last,
                refund,
            )
        return table

    # -- the buyer's app ----------------------------------------------------------------------
    def _new_sample(self, title: str, label: str, case_type: str = "return_refund") -> Sample:
        sample = Sample(len(self.samples) + 1, title, label, case_type)
        self.samples.append(sample)
        return sample

    def _submit(
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
        sample.case_id = self.service.submit(application, BUYER).case.id

    # -- events through the broker ----------------------------------------------------------
    def _event(
        self,
        sample: Sample,
        source: str,
        event_type: str,
        data: dict[str, Any] | None = None,
        *,
        parcel: str | None = None,
    ) -> dict[str, Any]:
        """Queue one event: a carrier names the order and parcel, front ends name the case."""
        self._event_no += 1
        prefix = _EVENT_PREFIX.get(source, source)
        envelope = make_envelope(
            source,
            event_type,
            case_id=None if parcel else sample.case_id,
            order_id=sample.order_id if parcel else None,
            tracking_no=parcel,
            data=data,
            event_id=f"{prefix}-{self._event_no:05d}",
            occurred_at=self.clock.now(),
        )
        self._send(sample, envelope)
        return envelope

    def _send(self, sample: Sample, envelope: dict[str, Any]) -> None:
        result = self.broker.send_task(INGEST_TASK, args=[envelope])
        self.sent.append(SentEvent(str(result.id), sample, envelope))

    def _ingested(self, expected: dict[str, int] | None = None) -> list[str]:
        """Wait until the worker has ingested every queued event; their statuses, in order.

        Every event must apply unless ``expected`` counts other statuses (the duplicate).
        """
        waiting = self.sent[self._checked :]
        self._checked = len(self.sent)

        def done() -> bool:
            return all(sent.task_id in self.log.results for sent in waiting)

        self._wait(f"the worker to ingest {len(waiting)} event(s)", done)
        statuses = [self.log.results[sent.task_id] for sent in waiting]
        wanted = dict(expected or {"applied": len(waiting)})
        counted = {status: statuses.count(status) for status in set(statuses)}
        if counted != wanted:
            raise DemoFailed(f"events ended {counted}, expected {wanted}{self._letters()}")
        return statuses

    def _letters(self) -> str:
        events = composition.build_event_service(self.settings, self.service)
        letters = events.dead_letters()
        if not letters:
            return ""
        return "; dead letters: " + "; ".join(f"{d.event_id}: {d.reason}" for d in letters)

    # -- time ----------------------------------------------------------------------------------
    def _at(self, *, hours: float) -> None:
        """Move the shared clock to ``START + hours`` (never backwards)."""
        target = START + timedelta(hours=hours)
        if target > self.clock.now():
            self.clock.set(target)

    def _past_deadline_of(self, sample: Sample) -> None:
        """Move the clock an hour past the case's pending deadline, for beat's sweep to fire."""
        deadline = self.service.get(_id(sample)).deadline
        if deadline is None:
            raise DemoFailed(f"case {sample.case_id} has no pending deadline")
        self.clock.set(deadline.due_at + timedelta(hours=1))

    # -- the play --------------------------------------------------------------------------------
    def play(self) -> list[Outcome]:
        self._wait_ready()
        live = None
        if self.console is not None and self.console.is_terminal:
            live = Live(self._screen(), console=self.console, auto_refresh=False)
        with live if live is not None else contextlib.nullcontext():
            self._live = live
            try:
                self._story()
            finally:
                self._poll()
                self._live = None
        if self.console is not None and live is None:
            self.console.print()
            self.console.print(self._screen())
        return self._outcomes()

    def _wait_ready(self) -> None:
        """Send ``aftersales.ping`` and wait for its proof: the worker consumes the broker."""
        token = f"live-demo-{os.getpid()}"
        self.broker.send_task("aftersales.ping", args=[token])
        if self.console is not None:
            self.console.print(
                f"[bold]after-sales live demo[/]: started `aftersales run` (pid {self.worker.pid})"
                f" on {self.layout.folder}; waiting for it to take tasks…"
            )
        self._wait("the worker to run a ping", (self.layout.pings / token).exists, READY_TIMEOUT_S)
        if self.console is not None:
            self.console.print(
                "worker ready: it consumes the embedded broker, beat sweeps timers every "
                f"{WORKER_TUNING['timer_sweep_interval_s']} s, and every process reads the "
                f"clock from {self.layout.clock}"
            )

    def _story(self) -> None:
        cast = Cast(
            self._new_sample("Return and refund, a gift missing", "jacket, scarf missing"),
            self._new_sample("Exchange of a faulty phone", "phone, speaker dead", "exchange"),
            self._new_sample("Warranty repair, auto-confirmed", "headphones repair", "repair"),
            self._new_sample(
                "Refund only, past the WeChat Pay window", "pre-order lost", "refund_only"
            ),
            self._new_sample("Nobody acts: auto-approve, then closed", "nobody acts"),
            self._new_sample("Refused: no-reason return on day 9", "day-9 no-reason"),
        )
        self._apply(cast)
        self._review(cast)
        self._return_leg(cast)
        self._inspection(cast)
        self._outcomes_by_events(cast)
        self._timers(cast)
        self._say("Every case has ended.")
        jacket, phone, headphones, preorder, idle, late = cast
        jacket.note = f"paid once by the worker{self._paid(jacket)}; duplicate event applied once"
        phone.note = "replacement confirmed by the buyer"
        headphones.note = "confirmed by the buyer_confirmation timer"
        preorder.note = f"bank transfer to …2233, paid once by the worker{self._paid(preorder)}"
        idle.note = "auto-approved after 48 h, closed after 7 days"
        late.note = f"rule {late.refusal.rule}" if late.refusal else ""

    def _apply(self, cast: Cast) -> None:
        """Day 1, 10:00: five applications, and a sixth the policy refuses."""
        self._say("Six buyers apply for after-sales (the buyer's app calls CaseService.submit).")
        scarf = {"sku": "gift-scarf", "quantity": 1, "value": 500}
        self._submit(
            cast.jacket, "clothing", "no_reason", 5, 2, 19_900, gifts=[scarf], description="small"
        )
        self._submit(cast.phone, "phone", "quality_issue", 24, 20, 329_900, description="mute")
        self._submit(cast.headphones, "electronics", "quality_issue", 155, 150, 89_900)
        self._submit(cast.preorder, "home", "not_received", 380, None, 45_800)
        self._submit(cast.idle, "home", "no_reason", 4, 1, 12_800)
        try:
            self._submit(cast.late, "clothing", "no_reason", 12, 9, 25_900)
        except PolicyRefusal as refusal:
            cast.late.refusal = refusal
            self._aside(f"the sixth is refused, no case is created: {refusal}", style="red")
        else:
            raise DemoFailed("the day-9 no-reason return should have been refused")
        self._expect(CaseState.SUBMITTED, *cast.cases, why="the five submissions")

    def _review(self, cast: Cast) -> None:
        self._at(hours=2)
        approved = (cast.jacket, cast.phone, cast.headphones, cast.preorder)
        self._say(
            f"The merchant approves cases {_ids(approved)} on the merchant portal "
            f"(merchant.approved events); nobody looks at case {cast.idle.case_id}."
        )
        for sample in approved:
            self._event(sample, "merchant-portal", "merchant.approved", _merchant())
        self._ingested()
        self._expect(CaseState.PICKUP, *cast.returns, why="the worker to book the courier pickups")
        self._expect(
            CaseState.AWAITING_BANK_ACCOUNT, cast.preorder, why="the pre-order's refund to start"
        )
        self._aside(
            "the worker booked the three courier pickups with the (fake) carrier; case "
            f"{cast.preorder.case_id} was paid 380 days ago, past WeChat Pay's 365-day refund "
            "window, so it waits for a bank account"
        )

    def _return_leg(self, cast: Cast) -> None:
        self._at(hours=6)
        self._say("The courier collects the three return parcels (parcel.picked_up, sf-express).")
        for sample in cast.returns:
            self._event(
                sample, "sf-express", "parcel.picked_up", {"carrier": "SF"}, parcel=sample.back
            )
        self._ingested()
        self._expect(CaseState.SHIPPED_BACK, *cast.returns, why="the pickups")

        self._at(hours=26)
        jacket = cast.jacket
        self._say(
            "Next day the carrier reports the return parcels delivered; its webhook fires twice "
            f"for case {jacket.case_id}'s parcel (the same event_id)."
        )
        delivered = self._event(jacket, "sf-express", "parcel.delivered", parcel=jacket.back)
        self._send(jacket, dict(delivered))
        for sample in (cast.phone, cast.headphones):
            self._event(sample, "sf-express", "parcel.delivered", parcel=sample.back)
        statuses = self._ingested({"applied": 3, "duplicate": 1})
        self._expect(CaseState.RETURN_DELIVERED, *cast.returns, why="the deliveries")
        moves = [
            r for r in self.service.history(_id(jacket)) if r.trigger == "record_return_delivery"
        ]
        self._aside(
            f"event {delivered['event_id']} twice → {statuses[0]}, {statuses[1]}: case "
            f"{jacket.case_id}'s history holds {len(moves)} record_return_delivery"
        )
        if len(moves) != 1:
            raise DemoFailed(f"the repeated delivery moved case {jacket.case_id} twice")

        self._at(hours=28)
        self._say(
            "The merchant confirms receipt of the three parcels (merchant.receipt_confirmed)."
        )
        for sample in cast.returns:
            self._event(sample, "merchant-portal", "merchant.receipt_confirmed", _merchant())
        self._ingested()
        self._expect(CaseState.RECEIVED, *cast.returns, why="the receipts")

    def _inspection(self, cast: Cast) -> None:
        self._at(hours=30)
        self._say(
            "The merchant inspects: the jacket came back without its free scarf (−¥5.00); the "
            "phone's and the headphones' faults are confirmed (merchant.inspected)."
        )
        inspected = "merchant.inspected"
        missing = _merchant(gifts_missing=["gift-scarf"])
        self._event(cast.jacket, "merchant-portal", inspected, missing)
        self._event(cast.phone, "merchant-portal", inspected, _merchant(note="speaker fault"))
        self._event(cast.headphones, "merchant-portal", inspected, _merchant(note="connector"))
        self._ingested()
        self._expect(CaseState.REFUNDED, cast.jacket, why="the worker to pay the jacket's refund")
        self._expect(CaseState.INSPECTED, cast.phone, cast.headphones, why="the inspections")
        self._aside(
            f"case {cast.jacket.case_id}: the inspection started the refund; the worker paid "
            f"it through the (fake) payment gateway{self._reference(cast.jacket)} → refunded"
        )

    def _outcomes_by_events(self, cast: Cast) -> None:
        phone, headphones, preorder = cast.phone, cast.headphones, cast.preorder
        self._at(hours=31)
        self._say("The merchant ships the replacement phone and the repaired headphones.")
        for sample, event_type in (
            (phone, "merchant.replacement_shipped"),
            (headphones, "merchant.repaired_shipped"),
        ):
            shipped = _merchant(tracking_no=sample.out, carrier="SF")
            self._event(sample, "merchant-portal", event_type, shipped)
        self._ingested()
        self._expect(CaseState.SHIPPED_TO_BUYER, phone, headphones, why="the shipments")

        self._at(hours=32)
        self._say(
            f"Case {preorder.case_id}'s buyer enters a bank account in the app "
            "(buyer.bank_account_provided)."
        )
        account = {"holder": "Li Wei", "bank": "ICBC", "account_no": "6222020200112233"}
        self._event(preorder, "buyer-app", "buyer.bank_account_provided", _buyer(**account))
        self._ingested()
        self._expect(CaseState.REFUNDED, preorder, why="the worker to pay the bank transfer")
        self._aside(
            f"case {preorder.case_id}: the worker paid ¥458.00 by bank transfer to …2233"
            f"{self._reference(preorder)}"
        )

        self._at(hours=44)
        self._say("The carrier delivers the phone and the headphones to the buyer.")
        for sample in (phone, headphones):
            self._event(sample, "sf-express", "parcel.delivered", parcel=sample.out)
        self._ingested()
        self._expect(CaseState.DELIVERED_TO_BUYER, phone, headphones, why="the outbound deliveries")

        self._at(hours=45)
        self._say(
            f"Case {phone.case_id}'s buyer confirms the new phone works (buyer.delivery_confirmed)."
        )
        self._event(phone, "buyer-app", "buyer.delivery_confirmed", _buyer())
        self._ingested()
        self._expect(CaseState.EXCHANGED, phone, why="the buyer's confirmation")

    def _timers(self, cast: Cast) -> None:
        """Nobody acts any more: the clock jumps past each deadline and beat's sweep fires it."""
        idle, headphones = cast.idle, cast.headphones
        self._past_deadline_of(idle)
        self._say(
            f"48 h pass since case {idle.case_id} was submitted and the merchant never reviewed "
            "it: the review timer approves it."
        )
        self._expect(CaseState.PICKUP, idle, why="the auto-approval and the pickup booking")
        self._aside("auto-approved by the timer sweep; the worker booked a courier pickup")

        self._past_deadline_of(idle)
        self._say(
            f"A week passes and case {idle.case_id}'s buyer never hands the parcel over: the "
            "return window closes the case."
        )
        self._expect(CaseState.CLOSED, idle, why="the return window to close the case")

        self._past_deadline_of(headphones)
        self._say(
            f"10 days after delivery, case {headphones.case_id}'s buyer has not confirmed the "
            "repair: the confirmation timer does."
        )
        self._expect(CaseState.REPAIRED, headphones, why="the confirmation timer")

    def _reference(self, sample: Sample) -> str:
        for record in reversed(self.service.history(_id(sample))):
            if record.trigger == "confirm_refund":
                return f" (reference {record.data.get('reference')})"
        return ""

    def _paid(self, sample: Sample) -> str:
        """What the fake payment gateway's ledger holds for the case: one payment."""
        gateways = build_fake_gateways(
            FakeGatewaySettings(ledger_url=None), self.settings.database.url, self.clock
        )
        count = gateways.payments.payments_count(_id(sample))
        if count != 1:
            raise DemoFailed(f"case {sample.case_id} was paid {count} times")
        return f" ({views.yuan(gateways.payments.amount_paid(_id(sample)))})"

    def _outcomes(self) -> list[Outcome]:
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
                "status": self.log.results.get(sent.task_id),
            }
            for sent in self.sent
        ]


#: Event ids as each producer might number them: ``sf-00012``, ``mp-00003``.
_EVENT_PREFIX = {"sf-express": "sf", "merchant-portal": "mp", "buyer-app": "app"}


def _merchant(**data: Any) -> dict[str, Any]:
    return {"merchant_id": MERCHANT.id, **data}


def _buyer(**data: Any) -> dict[str, Any]:
    return {"buyer_id": BUYER.id, **data}


def _id(sample: Sample) -> int:
    if sample.case_id is None:
        raise DemoFailed(f"sample {sample.number} has no case")
    return sample.case_id


def _ids(samples: Iterable[Sample]) -> str:
    return ", ".join(str(sample.case_id) for sample in samples)


# == entry point ===================================================================================


def run(
    folder: Path = DEMO_DIR, console: Console | None = None, pace: float | None = None
) -> LiveResult:
    """Play the live demo in ``folder``; print it if ``console``. The worker is always stopped.

    ``pace``: seconds to pause after each step; default 1.5 on a terminal, else none.
    """
    started = time.monotonic()
    if pace is None:
        pace = TERMINAL_PACE_S if console is not None and console.is_terminal else 0.0
    layout = prepare(folder)
    worker = WorkerProcess(layout)
    with _sigterm_as_interrupt():
        try:
            worker.start()
            demo = LiveDemo(layout, worker, console, pace)
            outcomes = demo.play()
        except DemoFailed:
            tail = worker.log_tail()
            if tail:
                print(f"--- last lines of {layout.log} ---\n{tail}", file=sys.stderr)
            raise
        finally:
            worker.stop()
    if console is not None:
        how = "warm shutdown (SIGTERM)" if worker.stopped_by == "sigterm" else "SIGKILL"
        console.print(
            f"\nworker pid {worker.pid} stopped: {how}, exit code {worker.returncode()}; "
            f"its log is {layout.log}"
        )
        console.print()
        console.print(summary_table(outcomes))
    return LiveResult(
        outcomes,
        demo.events_json(),
        worker.pid,
        worker.returncode(),
        worker.stopped_by,
        layout.folder,
        time.monotonic() - started,
    )
