"""What every command group of ``aftersales`` shares: the global options' state, reading
input, printing (rich for people, JSON for scripts) and turning errors into exit codes.

An error prints one line on stderr (``error: ...``, or ``{"error": {...}}`` with ``--json``) and
exits with one code per kind of error (``EXIT_CODES``; the table is in docs/cli.md).
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from datetime import datetime, tzinfo
from typing import TYPE_CHECKING, Annotated, Any

import typer
from typer.core import TyperGroup

from config.errors import SetupError
from entrypoints.cli.inputs import InputError
from entrypoints.terminal import json_safe, printable
from workflow.errors import (
    AftersalesError,
    Conflict,
    Forbidden,
    InvalidInput,
    NotAllowed,
    NotFound,
    PolicyRefusal,
)

if TYPE_CHECKING:
    from rich.console import Console

    # Typer vendors click and exports no public name for the base context its groups receive.
    from typer._click import Context as ClickContext

    from config.settings import Settings
    from tasks.kick import RelayKicker
    from workflow.orders_service import OrderService
    from workflow.service import CaseService

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


@dataclass
class State:
    """What the global options decided, shared by every command of one invocation; it builds
    the settings and the services through the composition root, once, on first use."""

    json: bool = False
    now: datetime | None = None
    _settings: Settings | None = None
    _service: CaseService | None = None
    _orders: OrderService | None = None
    kicker: RelayKicker | None = None

    def settings(self) -> Settings:
        if self._settings is None:
            from entrypoints import composition

            self._settings = composition.load_settings()
        return self._settings

    def service(self) -> CaseService:
        # Built on first use so ``diagram`` and ``--help`` never touch the database.
        if self._service is None:
            from entrypoints import composition

            self._service = composition.build_service(
                self.settings(), composition.make_clock(self.now), outbox_written=self._kick_relay
            )
        return self._service

    def orders(self) -> OrderService:
        """Orders of record on the same database, clock and policy as ``service()``."""
        if self._orders is None:
            from entrypoints import composition

            self._orders = composition.build_order_service(self.settings(), self.service())
        return self._orders

    def _kick_relay(self) -> None:
        """After a commit that wrote outbox rows. The kicker (and Celery) is built here, not
        with the service: commands that only read (or write no effects) never pay for it."""
        if self.kicker is None:
            from entrypoints import composition

            self.kicker = composition.relay_kicker(self.settings())
        self.kicker()

    def close(self) -> None:
        """Let a relay kick that is under way reach the broker before the process exits."""
        if self.kicker is not None:
            self.kicker.flush(KICK_FLUSH_S)

    def zone(self) -> tzinfo:
        """The display zone (``AFTERSALES_DISPLAY_TZ``) every time a person reads is shown in."""
        return self.settings().display_zone

    def shown_zone(self) -> tzinfo | None:
        """The display zone if the settings load, for error messages (which may be about the
        settings themselves)."""
        if self._settings is not None:
            return self._settings.display_zone
        try:
            return self.settings().display_zone
        except Exception:  # the error being reported may be this very one
            return None


def state_of(ctx: typer.Context, json_output: bool = False) -> State:
    """The invocation's state, with a command's own ``--json`` added to the global one."""
    state = ctx.ensure_object(State)
    state.json = state.json or json_output
    return state


class ReportingGroup(TyperGroup):
    """Turns the errors a user can act on into one line and an exit code, never a traceback.

    Every command runs inside the top group's ``invoke``, so this one place covers them all,
    whether started by the console script or by a test's ``CliRunner``; ``make_context`` covers
    what comes before: the arguments themselves and the top-level options.
    """

    def make_context(
        self,
        info_name: str | None,
        args: list[str],
        parent: ClickContext | None = None,
        **extra: Any,
    ) -> ClickContext:
        as_json = "--json" in args
        for position, arg in enumerate(args, 1):
            if not _is_unicode(arg):
                # Bytes that are not UTF-8 reach Python as lone surrogates, which no database,
                # file name or terminal takes: refused here, once, for every command.
                shown = arg.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
                message = f"argument {position} ({shown}) is not UTF-8 text"
                print_error("invalid_text", message, {}, as_json)
                raise typer.Exit(EXIT_USAGE)
        try:
            return super().make_context(info_name, args, parent, **extra)
        except click_errors.NoArgsIsHelpError:
            raise
        except click_errors.UsageError as error:
            # A top-level option did not parse: the same one line as every other error.
            print_error("usage", f"{error.format_message()} (see: {info_name} --help)", {}, as_json)
            raise typer.Exit(error.exit_code) from None

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
        except Exception as error:
            if not is_reported(error):
                raise
            state = ctx.obj if isinstance(ctx.obj, State) else State()
            # JSON keeps times in UTC, as everywhere in JSON; people read the display zone.
            zone = None if state.json else state.shown_zone()
            code, message, extra = describe(error, zone)
            print_error(code, message, extra, state.json)
            raise typer.Exit(exit_code(error)) from None


def _is_unicode(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _loaded(module: str, name: str) -> type[Exception] | None:
    """An exception type of a library, if that library was imported: an error of a library
    this process never loaded cannot have been raised, and importing it to check would cost
    every command its start-up time (``--help`` loads neither pydantic nor SQLAlchemy)."""
    found = getattr(sys.modules.get(module), name, None)
    return found if isinstance(found, type) and issubclass(found, Exception) else None


def _validation_error() -> type[Exception] | None:
    return _loaded("pydantic_core", "ValidationError")


def _database_error() -> type[Exception] | None:
    """The database went away or stayed locked mid-command."""
    return _loaded("sqlalchemy.exc", "OperationalError")


def is_reported(error: Exception) -> bool:
    """An error a user can act on, reported as one line; anything else is a bug."""
    if isinstance(error, AftersalesError | InputError | SetupError):
        return True
    return any(
        kind is not None and isinstance(error, kind)
        for kind in (_validation_error(), _database_error())
    )


def describe(error: Exception, zone: tzinfo | None = None) -> tuple[str, str, dict[str, Any]]:
    """(code, one line, extra fields); the line's times in ``zone`` when one is given."""
    extra: dict[str, Any] = {}
    if isinstance(error, NotAllowed):
        extra["allowed"] = error.allowed
    elif isinstance(error, PolicyRefusal):
        extra["rule"] = error.rule
    elif isinstance(error, InvalidInput) and error.field:
        extra["field"] = error.field
    elif isinstance(error, Conflict) and error.current_version is not None:
        extra["current_version"] = error.current_version
    if isinstance(error, AftersalesError):
        shown = error.phrase.render(lambda moment: _local(moment, zone)) if zone else str(error)
        return error.code, shown, extra
    if isinstance(error, InputError | SetupError):
        return error.code, str(error), extra
    validation = _validation_error()
    if validation is not None and isinstance(error, validation):
        first = error.errors()[0]  # type: ignore[attr-defined]
        where = ".".join(str(part) for part in first["loc"])
        return "invalid_input", f"{where}: {first['msg']}" if where else first["msg"], extra
    # An OperationalError: the database went away or stayed locked mid-command.
    detail = str(getattr(error, "orig", None) or error).strip().splitlines()
    return "database", f"database: {detail[0] if detail else error}", extra


def exit_code(error: Exception) -> int:
    for error_type, code in EXIT_CODES.items():
        if isinstance(error, error_type):
            return code
    validation = _validation_error()
    if isinstance(error, InputError) or (validation is not None and isinstance(error, validation)):
        return EXIT_USAGE
    return EXIT_OTHER


def print_error(code: str, message: str, extra: dict[str, Any], as_json: bool) -> None:
    one_line = " ".join(message.split())
    if as_json:
        body = {"error": {"code": code, "message": one_line, **extra}}
        typer.echo(json_text(body, indent=None), err=True)
    else:
        typer.echo(f"error: {printable(one_line)}", err=True)


#: Width when stdout is not a terminal (a pipe, a file, a test): wide enough for the tables,
#: where rich would otherwise assume 80 columns and squeeze them.
PIPE_WIDTH = 130


def new_console() -> Console:
    # Created per call so output goes to whatever sys.stdout is now (tests swap it).
    from rich.console import Console

    console = Console(highlight=False)
    if not console.is_terminal:
        console = Console(highlight=False, width=PIPE_WIDTH)
    return console


def json_text(data: Any, indent: int | None = 2) -> str:
    return json_safe(json.dumps(data, ensure_ascii=False, indent=indent))


def print_json(data: Any) -> None:
    typer.echo(json_text(data))


def _local(moment: datetime, zone: tzinfo) -> str:
    from entrypoints.views import local

    return local(moment, zone)
