"""What every command group of ``aftersales`` shares: the global options' state, reading
input, printing (rich for people, JSON for scripts) and turning errors into exit codes.

An error prints one line on stderr (``error: ...``, or ``{"error": {...}}`` with ``--json``) and
exits with one code per kind of error (``EXIT_CODES``; the table is in docs/cli.md).
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
from sqlalchemy.exc import OperationalError
from typer.core import TyperGroup

from config.errors import SetupError
from config.settings import Settings
from entrypoints import composition
from workflow.errors import (
    AftersalesError,
    Conflict,
    Forbidden,
    InvalidInput,
    NotAllowed,
    NotFound,
    PolicyRefusal,
)
from workflow.service import CaseService

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
#: How long a command waits at exit for its relay kick to reach the broker.
KICK_FLUSH_S = 2.0
EXIT_USAGE = 2
EXIT_OTHER = 1
#: Above this many items (due timers, event lines) a command shows a progress bar.
PROGRESS_THRESHOLD = 20

JsonFlag = Annotated[
    bool, typer.Option("--json", help="Print JSON (money in integer fen, times in UTC).")
]


class InputError(Exception):
    """Bad input caught before the service is called: a file, a JSON document, a time."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass
class State:
    """What the global options decided, shared by every command of one invocation; it builds
    the settings and the services through the composition root, once, on first use."""

    json: bool = False
    now: datetime | None = None
    _settings: Settings | None = None
    _service: CaseService | None = None
    kicker: RelayKicker | None = None

    def settings(self) -> Settings:
        if self._settings is None:
            self._settings = composition.load_settings()
        return self._settings

    def service(self) -> CaseService:
        # Built on first use so ``diagram`` and ``--help`` never touch the database.
        if self._service is None:
            self._service = composition.build_service(
                self.settings(), composition.make_clock(self.now), outbox_written=self._kick_relay
            )
        return self._service

    def _kick_relay(self) -> None:
        """After a commit that wrote outbox rows. The kicker (and Celery) is built here, not
        with the service: commands that only read (or write no effects) never pay for it."""
        if self.kicker is None:
            self.kicker = composition.relay_kicker(self.settings())
        self.kicker()

    def close(self) -> None:
        """Let a relay kick that is under way reach the broker before the process exits."""
        if self.kicker is not None:
            self.kicker.flush(KICK_FLUSH_S)

    def zone(self) -> ZoneInfo:
        return ZoneInfo(self.service().policy.timezone)


def state_of(ctx: typer.Context, json_output: bool = False) -> State:
    """The invocation's state, with a command's own ``--json`` added to the global one."""
    state = ctx.ensure_object(State)
    state.json = state.json or json_output
    return state


class ReportingGroup(TyperGroup):
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
            print_error("usage", message, {}, state.json)
            raise typer.Exit(error.exit_code) from None
        except (
            AftersalesError,
            InputError,
            SetupError,
            ValidationError,
            OperationalError,
        ) as error:
            state = ctx.obj if isinstance(ctx.obj, State) else State()
            code, message, extra = describe(error)
            print_error(code, message, extra, state.json)
            raise typer.Exit(exit_code(error)) from None


def describe(error: Exception) -> tuple[str, str, dict[str, Any]]:
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


def exit_code(error: Exception) -> int:
    for error_type, code in EXIT_CODES.items():
        if isinstance(error, error_type):
            return code
    if isinstance(error, InputError | ValidationError):
        return EXIT_USAGE
    return EXIT_OTHER


def print_error(code: str, message: str, extra: dict[str, Any], as_json: bool) -> None:
    one_line = " ".join(message.split())
    if as_json:
        body = {"error": {"code": code, "message": one_line, **extra}}
        typer.echo(json.dumps(body, ensure_ascii=False), err=True)
    else:
        typer.echo(f"error: {one_line}", err=True)


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


def read_text(source: str | None) -> tuple[str, str]:
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


def parse_json(text: str, name: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as error:
        raise InputError(
            "invalid_json",
            f"{name} is not valid JSON: {error.msg} at line {error.lineno} column {error.colno}",
        ) from None


def parse_data(text: str | None) -> dict[str, Any] | None:
    """``--data``: a JSON object inline, or ``@FILE`` to read it from a file."""
    if text is None:
        return None
    if text.startswith("@"):
        body, name = read_text(text[1:])
    else:
        body, name = text, "--data"
    data = parse_json(body, name)
    if not isinstance(data, dict):
        raise InputError("invalid_json", f"{name} must be a JSON object, e.g. '{{\"key\": 1}}'")
    return data


#: Width when stdout is not a terminal (a pipe, a file, a test): wide enough for the tables,
#: where rich would otherwise assume 80 columns and squeeze them.
PIPE_WIDTH = 130


def new_console() -> Console:
    # Created per call so output goes to whatever sys.stdout is now (tests swap it).
    console = Console(highlight=False)
    if not console.is_terminal:
        console = Console(highlight=False, width=PIPE_WIDTH)
    return console


def print_json(data: Any) -> None:
    typer.echo(json.dumps(data, ensure_ascii=False, indent=2))
