"""``aftersales``: the command line, a thin adapter from the shell to ``CaseService``.

Each command parses its arguments, calls one service method and prints the result: rich tables
for people, or JSON with ``--json`` (globally, ``aftersales --json case show 1``, or per command,
``aftersales case show 1 --json``). ``--now`` runs a command as of another instant on a fixed
simulation clock, which is how the demo and the tests travel in time.

Errors print one line on stderr (``error: ...``, or ``{"error": {...}}`` with ``--json``) and
exit with a code per kind of error, so scripts can tell them apart:

====  ==================  ==============================================================
code  error code          meaning
====  ==================  ==============================================================
0                         success
1     setup, database     the database is unreachable or not migrated, bad policy file
2     invalid_input, ...  bad option or argument, malformed JSON, missing file, bad time
3     not_found           no such case (or timer)
4     forbidden           this actor may not act on this case
5     not_allowed         the trigger cannot fire now; the message lists the allowed ones
6     conflict            the case changed meanwhile (stale ``--expected-version``)
7     policy_refusal      a rule of the after-sales policy refuses; names the rule and dates
====  ==================  ==============================================================
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any
from zoneinfo import ZoneInfo

import typer
from pydantic import ValidationError
from rich.console import Console
from rich.progress import Progress
from rich.text import Text
from sqlalchemy.exc import OperationalError
from typer.core import TyperGroup

from config.settings import get_settings
from entrypoints import bootstrap, cli_http, cli_workers, readme_diagrams, render, views
from entrypoints.bootstrap import SetupError
from entrypoints.cli_events import events_app
from workflow.diagram import mermaid
from workflow.errors import (
    AftersalesError,
    Conflict,
    Forbidden,
    InvalidInput,
    NotAllowed,
    NotFound,
    PolicyRefusal,
)
from workflow.model import Actor
from workflow.ports import CaseQuery
from workflow.service import CaseService, CaseView, TimerRun
from workflow.states import CaseState, CaseType

if TYPE_CHECKING:
    # Typer vendors click and exports no public name for the base context its groups receive.
    from typer._click import Context as ClickContext

    from tasks.kick import RelayKicker

try:  # recent typer vendors click; older releases depend on the click package instead
    from typer._click import exceptions as click_errors
except ImportError:  # pragma: no cover
    import click.exceptions as click_errors  # type: ignore[no-redef]

#: Exit codes per error type; the table in the module docstring documents them.
EXIT_CODES: dict[type[Exception], int] = {
    InvalidInput: 2,
    NotFound: 3,
    Forbidden: 4,
    NotAllowed: 5,
    Conflict: 6,
    PolicyRefusal: 7,
}
#: Cases per page of ``case list``.
DEFAULT_PAGE = 20
#: How long a command waits at exit for its relay kick to reach the broker.
KICK_FLUSH_S = 2.0
EXIT_USAGE = 2
EXIT_OTHER = 1

#: Above this many due timers ``timers run-due`` shows a progress bar and fires them in batches.
PROGRESS_THRESHOLD = 20
RUN_BATCH = 25


class InputError(Exception):
    """Bad input caught before the service is called: a file, a JSON document, a time."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass
class State:
    """What the global options decided, shared by every command of one invocation."""

    json: bool = False
    now: datetime | None = None
    _service: CaseService | None = None
    kicker: RelayKicker | None = None

    def service(self) -> CaseService:
        # Built on first use so ``diagram`` and ``--help`` never touch the database.
        if self._service is None:
            self._service = bootstrap.build_service(
                get_settings(), bootstrap.make_clock(self.now), outbox_written=self._kick_relay
            )
        return self._service

    def _kick_relay(self) -> None:
        """After a commit that wrote outbox rows. Celery is imported and the kicker built here,
        not with the service: commands that only read (or write no effects) never pay for it."""
        if self.kicker is None:
            from tasks.app import create_app as create_celery_app
            from tasks.kick import RelayKicker

            self.kicker = RelayKicker(create_celery_app(get_settings()))
        self.kicker()

    def close(self) -> None:
        """Let a relay kick that is under way reach the broker before the process exits."""
        if self.kicker is not None:
            self.kicker.flush(KICK_FLUSH_S)

    def zone(self) -> ZoneInfo:
        return ZoneInfo(self.service().policy.timezone)


class _ReportingGroup(TyperGroup):
    """Turns the errors a user can act on into one line and an exit code, never a traceback.

    Every command runs inside the top group's ``invoke``, so this one place covers them all,
    whether started by the console script or by a test's ``CliRunner``.
    """

    def invoke(self, ctx: ClickContext) -> Any:
        try:
            return super().invoke(ctx)
        except click_errors.NoArgsIsHelpError:
            raise  # ``aftersales case`` alone prints the help, as it should
        except click_errors.UsageError as error:
            # A subcommand's arguments did not parse: the same one line as every other error.
            state = ctx.obj if isinstance(ctx.obj, State) else State()
            where = error.ctx.command_path if error.ctx else ctx.command_path
            message = f"{error.format_message()} (see: {where} --help)"
            _print_error("usage", message, {}, state.json)
            raise typer.Exit(error.exit_code) from None
        except (
            AftersalesError,
            InputError,
            SetupError,
            ValidationError,
            OperationalError,
        ) as error:
            state = ctx.obj if isinstance(ctx.obj, State) else State()
            code, message, extra = _describe(error)
            _print_error(code, message, extra, state.json)
            raise typer.Exit(_exit_code(error)) from None


def _describe(error: Exception) -> tuple[str, str, dict[str, Any]]:
    extra: dict[str, Any] = {}
    if isinstance(error, NotAllowed):
        extra["allowed"] = error.allowed
    elif isinstance(error, PolicyRefusal):
        extra["rule"] = error.rule
    elif isinstance(error, InvalidInput) and error.field:
        extra["field"] = error.field
    elif isinstance(error, Conflict) and error.current_version is not None:
        extra["current_version"] = error.current_version
    if isinstance(error, AftersalesError | InputError | SetupError):
        return error.code, str(error), extra
    if isinstance(error, ValidationError):
        first = error.errors()[0]
        where = ".".join(str(part) for part in first["loc"])
        return "invalid_input", f"{where}: {first['msg']}" if where else first["msg"], extra
    # An OperationalError: the database went away or stayed locked mid-command.
    detail = str(getattr(error, "orig", None) or error).strip().splitlines()
    return "database", f"database: {detail[0] if detail else error}", extra


def _exit_code(error: Exception) -> int:
    for error_type, code in EXIT_CODES.items():
        if isinstance(error, error_type):
            return code
    if isinstance(error, InputError | ValidationError):
        return EXIT_USAGE
    return EXIT_OTHER


def _print_error(code: str, message: str, extra: dict[str, Any], as_json: bool) -> None:
    one_line = " ".join(message.split())
    if as_json:
        body = {"error": {"code": code, "message": one_line, **extra}}
        typer.echo(json.dumps(body, ensure_ascii=False), err=True)
    else:
        typer.echo(f"error: {one_line}", err=True)


app = typer.Typer(
    cls=_ReportingGroup,
    name="aftersales",
    help="After-sales cases: submit, move through their workflow, watch their deadlines.",
    epilog="Exit codes: 0 ok, 1 setup/database, 2 invalid input, 3 not found, 4 forbidden, "
    "5 not allowed, 6 conflict, 7 refused by policy.",
    no_args_is_help=True,
    add_completion=False,
    # Locals would print settings such as the database URL with its password.
    pretty_exceptions_show_locals=False,
)
case_app = typer.Typer(no_args_is_help=True, help="Submit, inspect and move cases.")
timers_app = typer.Typer(no_args_is_help=True, help="Deadlines: list and fire the due ones.")
db_app = typer.Typer(no_args_is_help=True, help="Database schema.")
app.add_typer(case_app, name="case")
app.add_typer(timers_app, name="timers")
app.add_typer(db_app, name="db")
app.add_typer(events_app, name="events")
cli_workers.register(app)
cli_http.register(app)

JsonFlag = Annotated[
    bool, typer.Option("--json", help="Print JSON (money in integer fen, times in UTC).")
]
ActorOption = Annotated[
    str, typer.Option("--actor", help="Who acts: ROLE or ROLE:ID, e.g. merchant:m1, admin.")
]
ScopeOption = Annotated[
    str | None,
    typer.Option("--actor", help="See the case as this actor (a buyer sees only its own)."),
]


@app.callback()
def _global_options(
    ctx: typer.Context,
    now: Annotated[
        str | None,
        typer.Option(
            "--now",
            metavar="ISO8601",
            help="Run as of this instant on a fixed simulation clock; needs a timezone, "
            "e.g. 2026-11-20T10:00:00+08:00.",
        ),
    ] = None,
    json_output: JsonFlag = False,
) -> None:
    state = ctx.ensure_object(State)
    state.json = json_output
    state.now = parse_time(now, "--now") if now is not None else None
    ctx.call_on_close(state.close)


def _state(ctx: typer.Context, json_output: bool) -> State:
    state = ctx.ensure_object(State)
    state.json = state.json or json_output
    return state


# -- input parsing ------------------------------------------------------------------------------


def parse_time(text: str, option: str) -> datetime:
    """An aware ISO 8601 instant; a naive one is refused since its zone would be a guess."""
    try:
        moment = datetime.fromisoformat(text.strip())
    except ValueError:
        raise InputError(
            "invalid_time",
            f"{option} {text!r} is not an ISO 8601 time, e.g. 2026-11-20T10:00:00+08:00",
        ) from None
    if moment.tzinfo is None or moment.utcoffset() is None:
        raise InputError(
            "invalid_time",
            f"{option} {text} has no timezone; add one, e.g. {text}+08:00 or {text}Z",
        )
    return moment.astimezone(UTC)


def _read_text(source: str | None) -> tuple[str, str]:
    """The text of FILE, or of stdin for ``-`` (or no FILE with stdin piped in)."""
    if source is None or source == "-":
        if source is None and sys.stdin.isatty():
            raise InputError("usage", "give the application as FILE, or pipe it in on stdin")
        return sys.stdin.read(), "stdin"
    try:
        return Path(source).read_text(encoding="utf-8"), source
    except FileNotFoundError:
        raise InputError("file_not_found", f"no such file: {source}") from None
    except OSError as error:
        raise InputError("unreadable_file", f"cannot read {source}: {error.strerror}") from None
    except UnicodeDecodeError:
        raise InputError("unreadable_file", f"{source} is not UTF-8 text") from None


def _parse_json(text: str, name: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as error:
        raise InputError(
            "invalid_json",
            f"{name} is not valid JSON: {error.msg} at line {error.lineno} column {error.colno}",
        ) from None


def _parse_data(text: str | None) -> dict[str, Any] | None:
    """``--data``: a JSON object inline, or ``@FILE`` to read it from a file."""
    if text is None:
        return None
    if text.startswith("@"):
        body, name = _read_text(text[1:])
    else:
        body, name = text, "--data"
    data = _parse_json(body, name)
    if not isinstance(data, dict):
        raise InputError("invalid_json", f"{name} must be a JSON object, e.g. '{{\"key\": 1}}'")
    return data


# -- output -------------------------------------------------------------------------------------


#: Width when stdout is not a terminal (a pipe, a file, a test): wide enough for the tables,
#: where rich would otherwise assume 80 columns and squeeze them.
PIPE_WIDTH = 130


def _console() -> Console:
    # Created per call so output goes to whatever sys.stdout is now (tests swap it).
    console = Console(highlight=False)
    if not console.is_terminal:
        console = Console(highlight=False, width=PIPE_WIDTH)
    return console


def _print_json(data: Any) -> None:
    typer.echo(json.dumps(data, ensure_ascii=False, indent=2))


# -- commands -----------------------------------------------------------------------------------


@db_app.command("upgrade")
def db_upgrade(ctx: typer.Context, json_output: JsonFlag = False) -> None:
    """Apply pending schema migrations (needed once for PostgreSQL; SQLite does it itself)."""
    state = _state(ctx, json_output)
    shown = bootstrap.upgrade_database(get_settings())
    if state.json:
        _print_json({"database": shown, "schema": "current"})
    else:
        _console().print(Text(f"database {shown} is at the newest schema"))


@case_app.command("submit")
def case_submit(
    ctx: typer.Context,
    source: Annotated[
        str | None,
        typer.Argument(metavar="FILE", help="Application JSON; - or nothing reads stdin."),
    ] = None,
    idempotency_key: Annotated[
        str | None,
        typer.Option(help="Retrying with the same key returns the first case, not a second."),
    ] = None,
    actor: Annotated[
        str | None, typer.Option("--actor", help="Submitting actor (default: the buyer).")
    ] = None,
    json_output: JsonFlag = False,
) -> None:
    """Apply for after-sales with an application JSON document."""
    state = _state(ctx, json_output)
    text, name = _read_text(source)
    raw = _parse_json(text, name)
    service = state.service()
    view = service.submit(raw, Actor.parse(actor) if actor else None, idempotency_key)
    if state.json:
        _print_json(views.view_json(view))
    else:
        _console().print(render.case_card(view, service.clock.now(), state.zone()))


@case_app.command("show")
def case_show(
    ctx: typer.Context,
    case_id: Annotated[int, typer.Argument(metavar="ID")],
    actor: ScopeOption = None,
    history: Annotated[bool, typer.Option("--history", help="Add the timeline.")] = False,
    json_output: JsonFlag = False,
) -> None:
    """One case: state, deadline, refund."""
    state = _state(ctx, json_output)
    service = state.service()
    who = Actor.parse(actor) if actor else None
    view = service.get(case_id, who)
    records = service.history(case_id, who) if history else []
    if state.json:
        shown = views.view_json(view)
        if history:
            shown["history"] = [views.record_json(r) for r in records]
        _print_json(shown)
        return
    console = _console()
    console.print(render.case_card(view, service.clock.now(), state.zone()))
    if history:
        console.print(render.history_timeline(records, state.zone()))


@case_app.command("list")
def case_list(
    ctx: typer.Context,
    state_filter: Annotated[CaseState | None, typer.Option("--state")] = None,
    type_filter: Annotated[CaseType | None, typer.Option("--type")] = None,
    merchant: Annotated[str | None, typer.Option(help="Merchant id.")] = None,
    buyer: Annotated[str | None, typer.Option(help="Buyer id.")] = None,
    order: Annotated[str | None, typer.Option(help="Order id.")] = None,
    limit: Annotated[int, typer.Option(min=1, max=500, help="Cases per page.")] = DEFAULT_PAGE,
    after: Annotated[
        int | None, typer.Option(metavar="ID", help="Page on: cases after this id.")
    ] = None,
    actor: ScopeOption = None,
    json_output: JsonFlag = False,
) -> None:
    """Cases, oldest first, a page at a time."""
    state = _state(ctx, json_output)
    service = state.service()
    query = CaseQuery(
        state=state_filter,
        type=type_filter,
        merchant_id=merchant,
        buyer_id=buyer,
        order_id=order,
        after_id=after,
        # One more than shown tells whether a next page exists without a count query.
        limit=limit + 1,
    )
    found = service.list(query, Actor.parse(actor) if actor else None)
    page = found[:limit]
    next_after = page[-1].case.id if len(found) > limit else None
    if state.json:
        _print_json({"cases": [views.view_json(v) for v in page], "next_after": next_after})
        return
    console = _console()
    if not page:
        console.print("no cases" + (" after that id" if after else ""))
        return
    console.print(render.case_table(page, service.clock.now(), state.zone()))
    if next_after is not None:
        filters = {
            "--state": state_filter,
            "--type": type_filter,
            "--merchant": merchant,
            "--buyer": buyer,
            "--order": order,
            "--actor": actor,
            "--limit": limit if limit != DEFAULT_PAGE else None,
            "--after": next_after,
        }
        hint = " ".join(
            ["aftersales case list", *(f"{k} {v}" for k, v in filters.items() if v is not None)]
        )
        console.print(Text(f"more cases: {hint}", style="dim"))


@case_app.command("fire")
def case_fire(
    ctx: typer.Context,
    case_id: Annotated[int, typer.Argument(metavar="ID")],
    trigger: Annotated[str, typer.Argument(metavar="TRIGGER")],
    actor: ActorOption,
    reason: Annotated[str | None, typer.Option(help="Why; admins and rejections need one.")] = None,
    data: Annotated[
        str | None,
        typer.Option(metavar="JSON", help="Trigger data as a JSON object, or @FILE."),
    ] = None,
    idempotency_key: Annotated[
        str | None, typer.Option(help="A retry with the same key does not fire twice.")
    ] = None,
    expected_version: Annotated[
        int | None,
        typer.Option(metavar="N", help="Refuse (exit 6) unless the case is still at version N."),
    ] = None,
    json_output: JsonFlag = False,
) -> None:
    """Fire a trigger on a case as an actor (see `case triggers` for what is allowed)."""
    state = _state(ctx, json_output)
    payload = _parse_data(data)
    who = Actor.parse(actor)
    service = state.service()
    result = service.fire(case_id, trigger, who, payload, reason, idempotency_key, expected_version)
    if state.json:
        _print_json(views.fire_json(result))
        return
    console = _console()
    console.print(render.fired_summary(result.records, result.replayed))
    shown = CaseView(result.case, result.deadline)
    console.print(render.case_card(shown, service.clock.now(), state.zone()))


@case_app.command("triggers")
def case_triggers(
    ctx: typer.Context,
    case_id: Annotated[int, typer.Argument(metavar="ID")],
    actor: ActorOption,
    json_output: JsonFlag = False,
) -> None:
    """The triggers this actor may fire on the case now."""
    state = _state(ctx, json_output)
    who = Actor.parse(actor)
    service = state.service()
    names = service.allowed_triggers(case_id, who)
    if state.json:
        _print_json(names)
        return
    case = service.get(case_id, who).case
    console = _console()
    prefix = Text.assemble(f"case {case_id} is ", render.state_text(case.state), f"; {who} ")
    if names:
        console.print(prefix + Text("may fire: ") + Text(", ".join(names), style="bold"))
    else:
        console.print(prefix + Text("may fire nothing now"))


@case_app.command("history")
def case_history(
    ctx: typer.Context,
    case_id: Annotated[int, typer.Argument(metavar="ID")],
    actor: ScopeOption = None,
    json_output: JsonFlag = False,
) -> None:
    """Every transition of the case, oldest first."""
    state = _state(ctx, json_output)
    service = state.service()
    records = service.history(case_id, Actor.parse(actor) if actor else None)
    if state.json:
        _print_json([views.record_json(r) for r in records])
        return
    _console().print(render.history_timeline(records, state.zone()))


@case_app.command("extend-deadline")
def case_extend_deadline(
    ctx: typer.Context,
    case_id: Annotated[int, typer.Argument(metavar="ID")],
    actor: ActorOption,
    reason: Annotated[str, typer.Option(help="Why (holiday, dispute); kept in the history.")],
    until: Annotated[str | None, typer.Option(metavar="ISO8601", help="The new due time.")] = None,
    hours: Annotated[
        float | None, typer.Option(help="Hours added to the current due time.")
    ] = None,
    json_output: JsonFlag = False,
) -> None:
    """Move the case's current deadline later (admins only)."""
    state = _state(ctx, json_output)
    who = Actor.parse(actor)
    new_due = parse_time(until, "--until") if until is not None else None
    service = state.service()
    result = service.extend_deadline(case_id, who, reason, until=new_due, hours=hours)
    if state.json:
        _print_json(views.fire_json(result))
        return
    console = _console()
    console.print(render.fired_summary(result.records, result.replayed))
    console.print(
        render.case_card(CaseView(result.case, result.deadline), service.clock.now(), state.zone())
    )


@timers_app.command("due")
def timers_due(
    ctx: typer.Context,
    as_of: Annotated[
        str | None,
        typer.Option("--as-of", metavar="ISO8601", help="Due at this instant (default: now)."),
    ] = None,
    limit: Annotated[int, typer.Option(min=1, max=10_000)] = 100,
    json_output: JsonFlag = False,
) -> None:
    """Pending deadlines that are due, and how late each one is."""
    state = _state(ctx, json_output)
    service = state.service()
    moment = parse_time(as_of, "--as-of") if as_of is not None else service.clock.now()
    due = service.due_timers(moment, limit)
    if state.json:
        _print_json([views.timer_json(t, moment) for t in due])
        return
    console = _console()
    if not due:
        console.print(f"no timers due as of {views.local(moment, state.zone())}")
        return
    console.print(render.timers_table(due, moment, state.zone()))


@timers_app.command("run-due")
def timers_run_due(
    ctx: typer.Context,
    limit: Annotated[int, typer.Option(min=1, max=100_000, help="Fire at most this many.")] = 1000,
    json_output: JsonFlag = False,
) -> None:
    """Fire every due deadline now (a batch to a transaction, each timer on its own; use --now
    to simulate)."""
    state = _state(ctx, json_output)
    service = state.service()
    total = len(service.due_timers(limit=limit))
    if total <= PROGRESS_THRESHOLD or state.json:
        runs = service.run_due_timers(limit=limit)
    else:
        runs = _run_in_batches(service, total)
    if state.json:
        _print_json([views.run_json(run) for run in runs])
        return
    console = _console()
    if not runs:
        console.print("no timers due")
        return
    console.print(render.runs_table(runs))
    fired = sum(run.fired for run in runs)
    console.print(f"fired {fired} of {len(runs)} due timers")


def _run_in_batches(service: CaseService, total: int) -> list[TimerRun]:
    """Many due timers: fire them a batch at a time so the progress bar can move.

    Bounded by the count taken first, so timers that keep failing (a conflict leaves the timer
    pending) or new ones falling due meanwhile cannot keep the loop going.
    """
    runs: list[TimerRun] = []
    with Progress(console=Console(stderr=True), transient=True) as progress:
        task = progress.add_task("firing due timers", total=total)
        while len(runs) < total:
            batch = service.run_due_timers(limit=min(RUN_BATCH, total - len(runs)))
            if not batch:
                break
            runs.extend(batch)
            progress.advance(task, len(batch))
    return runs


@app.command("diagram")
def diagram(
    ctx: typer.Context,
    case_type: Annotated[CaseType | None, typer.Option("--type", help="The case type.")] = None,
    current: Annotated[CaseState | None, typer.Option(help="Highlight this state.")] = None,
    update_readme: Annotated[
        Path | None,
        typer.Option(metavar="FILE", help="Rewrite the diagram blocks of this Markdown file."),
    ] = None,
    check_readme: Annotated[
        Path | None,
        typer.Option(metavar="FILE", help="Exit 1 if the diagram blocks of this file are stale."),
    ] = None,
    json_output: JsonFlag = False,
) -> None:
    """The Mermaid state diagram of a case type, drawn from the transition table."""
    if update_readme is not None or check_readme is not None:
        path = update_readme or check_readme
        assert path is not None
        code = readme_diagrams.main([str(path), *([] if update_readme else ["--check"])])
        raise typer.Exit(code)
    if case_type is None:
        raise InputError("usage", "give --type (one of " + ", ".join(CaseType) + ")")
    text = mermaid(case_type, current)
    if _state(ctx, json_output).json:
        _print_json({"type": case_type.value, "mermaid": text})
        return
    # Exactly the generator's text: README blocks are compared with this output byte for byte.
    sys.stdout.write(text)


@app.command("demo")
def demo(
    ctx: typer.Context,
    db: Annotated[
        Path | None,
        typer.Option(
            help="SQLite file of the scripted demo (default var/demo.db); deleted and recreated "
            "each run."
        ),
    ] = None,
    live: Annotated[
        bool,
        typer.Option(
            "--live",
            help="Play it on the running service instead: `aftersales run` as a child process, "
            "events through the embedded broker, timers firing on a shared clock "
            "(files in var/demo-live/, recreated each run).",
        ),
    ] = False,
    json_output: JsonFlag = False,
) -> None:
    """Run the demo: sample cases of every type moving through their states."""
    state = _state(ctx, json_output)
    if live:
        if db is not None:
            raise InputError("usage", "--db is for the scripted demo; --live uses var/demo-live/")
        _demo_live(state)
        return
    from entrypoints import demo as demo_script

    outcomes = demo_script.run(
        db or Path("var/demo.db"), console=None if state.json else _console()
    )
    if state.json:
        _print_json([outcome.as_json() for outcome in outcomes])


def _demo_live(state: State) -> None:
    from entrypoints import live_demo

    try:
        result = live_demo.run(live_demo.DEMO_DIR, console=None if state.json else _console())
    except live_demo.DemoFailed as error:
        _print_error("demo_failed", str(error), {}, state.json)
        raise typer.Exit(EXIT_OTHER) from None
    except KeyboardInterrupt:
        typer.echo("interrupted; the demo's worker was stopped", err=True)
        raise typer.Exit(130) from None
    if state.json:
        _print_json(result.as_json())


def main() -> None:
    """The ``aftersales`` console script."""
    app()


if __name__ == "__main__":
    main()
