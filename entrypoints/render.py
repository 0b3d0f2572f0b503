"""Rich renderables for people: the case card, the history timeline and the listing tables.

Everything here only formats what the service returned; nothing decides anything.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from datetime import datetime, tzinfo
from typing import Any

from rich import box
from rich.console import Console, Group, RenderableType
from rich.measure import Measurement
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from entrypoints.terminal import printable
from entrypoints.views import local, local_time, masked, relative, span, yuan, zone_name
from workflow.model import Case, Timer, TransitionRecord
from workflow.service import CaseView, TimerRun
from workflow.states import CaseState, CaseType

_OUTCOMES = frozenset({CaseState.REFUNDED, CaseState.EXCHANGED, CaseState.REPAIRED})
_ENDED = frozenset({CaseState.CANCELLED, CaseState.CLOSED})
_TROUBLE = frozenset({CaseState.REJECTED, CaseState.DISPUTED, CaseState.REFUND_FAILED})
_WAITING_ON_BUYER = frozenset({CaseState.AWAITING_BANK_ACCOUNT})


def state_text(state: CaseState | None) -> Text:
    if state is None:
        return Text("—", style="dim")
    if state in _OUTCOMES:
        style = "bold green"
    elif state in _ENDED:
        style = "dim"
    elif state in _TROUBLE:
        style = "bold red"
    elif state in _WAITING_ON_BUYER:
        style = "bold yellow"
    else:
        style = "bold cyan"
    return Text(state.value, style=style)


def deadline_text(deadline: Timer | None, now: datetime, zone: tzinfo) -> Text:
    if deadline is None:
        return Text("none", style="dim")
    late = deadline.due_at <= now
    text = Text()
    text.append(relative(deadline.due_at, now), style="bold red" if late else "bold")
    text.append(f"  {deadline.kind} → {deadline.trigger}  (due {local(deadline.due_at, zone)})")
    return text


def _plain(value: RenderableType) -> RenderableType:
    """Data as literal text: rich would read ``[gift-scarf]`` in a plain str as markup, and a
    terminal would obey the escape sequences and line breaks stored text may hold."""
    return Text(printable(value)) if isinstance(value, str) else value


def _id_column(table: Table, header: str, ids: Iterable[object], style: str = "") -> None:
    """A column of ids that keeps its width when the terminal is narrow: rich would otherwise
    shrink it to nothing first (measured: ``case list`` at 80 columns lost its ids)."""
    widest = max((len(str(value)) for value in ids), default=1)
    table.add_column(
        header, justify="right", no_wrap=True, style=style, min_width=max(widest, len(header))
    )


def _row(table: Table, *cells: RenderableType) -> None:
    table.add_row(*(_plain(cell) for cell in cells))


def case_card(view: CaseView, now: datetime, zone: tzinfo) -> Panel:
    case = view.case
    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="dim", no_wrap=True)
    grid.add_column()
    _row(grid, "state", Text.assemble(state_text(case.state), f"  (version {case.version})"))
    _row(grid, "deadline", deadline_text(view.deadline, now, zone))
    _row(grid, "refund", _refund_text(case))
    _row(grid, "order", f"{case.order_id}   buyer {case.buyer_id}   merchant {case.merchant_id}")
    _row(grid, "category", f"{case.category}   reason {case.reason}")
    if case.description:
        _row(grid, "description", case.description)
    _row(
        grid,
        "payment",
        f"{yuan(case.payment.amount)} by {case.payment.channel}, "
        f"paid {local(case.payment.paid_at, zone)}",
    )
    _row(grid, "delivered", local(case.delivered_at, zone))
    _row(
        grid,
        "items",
        _lines(f"{printable(i.sku)} × {i.quantity} @ {yuan(i.unit_price)}" for i in case.items),
    )
    if case.gifts:
        _row(
            grid,
            "gifts",
            _lines(
                f"{printable(g.sku)} × {g.quantity} (worth {yuan(g.value)})" for g in case.gifts
            ),
        )
    for label, value in _facts(case):
        _row(grid, label, value)
    _row(grid, "opened", f"{local(case.created_at, zone)}   updated {local(case.updated_at, zone)}")
    title = Text(f"case {case.id} · {case.type.value}")
    return Panel(grid, title=title, title_align="left", box=box.ROUNDED, expand=False)


def _refund_text(case: Case) -> Text:
    text = Text(yuan(case.refund_amount), style="bold")
    if case.gift_deduction:
        text.append(f"  (less {yuan(case.gift_deduction)} for missing gifts)")
    if case.refund_route is not None:
        text.append(f"  via {case.refund_route.value}")
    elif case.type in (CaseType.EXCHANGE, CaseType.REPAIR):
        # These end with goods, not money; the amount matters only if converted to a refund.
        text.append("  (only if converted to a refund)", style="dim")
    if case.refund_attempts:
        text.append(f"  attempt {case.refund_attempts}")
    return text


def _lines(parts: Iterable[str]) -> Text:
    """Lines that are meant as lines, their parts already made printable."""
    return Text("\n".join(parts))


def _facts(case: Case) -> list[tuple[str, str]]:
    """The details worth a line on the card, in the order they happen."""
    # Masked like the JSON: a card is as likely to be pasted into a ticket as any output.
    details = masked(case.details)
    facts: list[tuple[str, str]] = []
    pickup = details.get("pickup")
    if isinstance(pickup, dict):
        facts.append(("pickup", f"{pickup.get('carrier')} code {pickup.get('pickup_code')}"))
    for key, label in (
        ("return_tracking_no", "return parcel"),
        ("outbound_tracking_no", "outbound"),
    ):
        if details.get(key):
            facts.append((label, str(details[key])))
    inspection = details.get("inspection")
    if isinstance(inspection, dict):
        if "deemed_passed_at" in inspection:
            facts.append(("inspection", "deemed passed (merchant did not inspect in time)"))
        else:
            missing = inspection.get("gifts_missing") or []
            note = f"gifts missing: {', '.join(missing)}" if missing else "complete"
            facts.append(("inspection", note))
    account = details.get("bank_account")
    if isinstance(account, dict):
        facts.append(
            (
                "bank account",
                f"{account.get('holder')}, {account.get('bank')}, {account.get('account_no')}",
            )
        )
    for key, label in (("parcel_incident", "parcel"), ("last_refund_error", "refund error")):
        if details.get(key):
            facts.append((label, str(details[key])))
    return facts


def history_timeline(records: Sequence[TransitionRecord], zone: tzinfo) -> Table:
    """One row per transition; data and reasons go under it so long values wrap, not crop."""
    table = Table(box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False)
    _id_column(table, "#", (record.seq for record in records), style="dim")
    table.add_column(f"when ({zone_name(zone)})", no_wrap=True)
    table.add_column("", no_wrap=True)
    table.add_column("by", no_wrap=True)
    table.add_column("via", no_wrap=True)
    table.add_column("transition", overflow="fold")
    for index, record in enumerate(records):
        marker = "●" if index == len(records) - 1 else "│"
        cell = Text.assemble(
            (record.trigger, "bold"),
            "  ",
            state_text(record.from_state),
            " → ",
            state_text(record.to_state),
        )
        note = _note(record, zone)
        if note:
            # The one line break here is ours; the reason's own are escaped by ``printable``.
            cell.append("\n" + printable(note), style="dim")
        via = record.source or "?"
        _row(table, str(record.seq), local_time(record.at, zone), marker, record.actor, via, cell)
    return table


def _note(record: TransitionRecord, zone: tzinfo) -> str:
    parts = []
    if record.reason:
        parts.append(f"“{record.reason}”")
    if record.data:
        data = masked(record.data)
        parts.append(", ".join(f"{key}={_short(value, zone)}" for key, value in data.items()))
    return "  ".join(parts)


#: An instant as the service writes it into a transition's data (``datetime.isoformat()``).
_INSTANT = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}(:\d{2}(\.\d+)?)?([+-]\d{2}:\d{2}|Z)$")


def _short(value: Any, zone: tzinfo) -> str:
    if isinstance(value, list):
        return "[" + ", ".join(str(item) for item in value) + "]"
    if isinstance(value, str) and _INSTANT.match(value):
        # An extension's from/to: shown in the display zone like every other time here.
        return local(datetime.fromisoformat(value), zone)
    return str(value)


#: ``case list`` columns left out, in this order, while the table is wider than the terminal:
#: the id, state, refund and deadline always stay (at 80 columns, so do type and order).
_CASE_COLUMNS_TO_DROP = ("merchant", "buyer", "updated", "order", "type")


def case_table(
    views: Sequence[CaseView], now: datetime, zone: tzinfo, width: int | None = None
) -> Table:
    """One row per case; the columns that fit in ``width`` (all of them without one)."""
    rows: list[dict[str, RenderableType]] = []
    for view in views:
        case = view.case
        deadline = (
            Text(f"{view.deadline.kind}, {relative(view.deadline.due_at, now)}")
            if view.deadline
            else Text("—", style="dim")
        )
        rows.append(
            {
                "id": str(case.id),
                "type": case.type.value,
                "state": state_text(case.state),
                "refund": yuan(case.refund_amount),
                "deadline": deadline,
                "order": case.order_id,
                "buyer": case.buyer_id,
                "merchant": case.merchant_id,
                "updated": local(case.updated_at, zone),
            }
        )
    shown = ["id", "type", "state", "refund", "deadline", "order", "buyer", "merchant", "updated"]
    table = _case_table(rows, shown)
    for column in _CASE_COLUMNS_TO_DROP:
        if width is None or _natural_width(table) <= width:
            break
        shown.remove(column)
        table = _case_table(rows, shown)
    return table


def _case_table(rows: Sequence[dict[str, RenderableType]], shown: Sequence[str]) -> Table:
    table = Table(box=box.SIMPLE_HEAD)
    for column in shown:
        if column == "id":
            _id_column(table, "id", (row["id"] for row in rows))
        elif column == "refund":
            table.add_column(column, justify="right", no_wrap=True)
        elif column in ("order", "buyer", "merchant"):
            table.add_column(column, overflow="fold")
        else:
            table.add_column(column, no_wrap=True)
    for row in rows:
        _row(table, *(row[column] for column in shown))
    return table


def _natural_width(table: Table) -> int:
    """The width ``table`` takes when nothing limits it."""
    unlimited = Console(width=10_000)
    return Measurement.get(unlimited, unlimited.options, table).maximum


def timers_table(timers: Sequence[Timer], as_of: datetime, zone: tzinfo) -> Table:
    table = Table(box=box.SIMPLE_HEAD)
    _id_column(table, "timer", (timer.id for timer in timers))
    _id_column(table, "case", (timer.case_id for timer in timers))
    table.add_column("state")
    table.add_column("kind")
    table.add_column("fires")
    table.add_column("due", no_wrap=True)
    table.add_column("late by", justify="right", style="red")
    for timer in timers:
        _row(
            table,
            str(timer.id),
            str(timer.case_id),
            state_text(timer.state),
            timer.kind,
            timer.trigger,
            local(timer.due_at, zone),
            span(as_of - timer.due_at) if as_of > timer.due_at else "due now",
        )
    return table


def runs_table(runs: Sequence[TimerRun]) -> Table:
    table = Table(box=box.SIMPLE_HEAD)
    _id_column(table, "timer", (run.timer.id for run in runs))
    _id_column(table, "case", (run.timer.case_id for run in runs))
    table.add_column("kind")
    table.add_column("fired")
    table.add_column("outcome")
    for run in runs:
        _row(
            table,
            str(run.timer.id),
            str(run.timer.case_id),
            run.timer.kind,
            Text("yes", style="green") if run.fired else Text("no", style="dim"),
            run.outcome,
        )
    return table


def fired_summary(records: Sequence[TransitionRecord], replayed: bool) -> RenderableType:
    """One line per transition the trigger wrote (a trigger may bring follow-ups along)."""
    lines: list[RenderableType] = []
    if replayed:
        lines.append(
            Text("already done earlier with this idempotency key; nothing changed", "yellow")
        )
    for record in records:
        lines.append(
            Text.assemble(
                (record.trigger, "bold"),
                ": ",
                state_text(record.from_state),
                " → ",
                state_text(record.to_state),
                f"  by {printable(record.actor)}",
                f" via {printable(record.source)}" if record.source else "",
            )
        )
    return Group(*lines)
