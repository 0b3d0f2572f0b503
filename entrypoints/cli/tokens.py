"""``aftersales tokens``: the HTTP API's bearer tokens, created, listed and revoked in the
database (the secret is printed once, at creation)."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Annotated, Any

import typer

from config.durations import format_duration, parse_duration
from entrypoints import composition, views
from entrypoints.cli.common import JsonFlag, State, new_console, print_json, state_of
from entrypoints.cli.inputs import MAX_ROW_ID, MAX_YEAR
from entrypoints.http.scopes import TokenRole, parse_scope
from entrypoints.terminal import printable
from workflow.errors import InvalidInput, NotFound

if TYPE_CHECKING:
    from datetime import tzinfo

    from rich.table import Table

    # The database is loaded by the commands that run (see cli.main): --help starts without.
    from persistence.tokens import ApiToken, SqlTokenStore

tokens_app = typer.Typer(
    no_args_is_help=True, help="Bearer tokens of the HTTP API: create, list, revoke."
)


def _token_json(token: ApiToken) -> dict[str, Any]:
    return {
        "id": token.id,
        "role": token.scope,
        "name": token.name,
        "created_at": views.iso(token.created_at),
        "revoked_at": views.iso(token.revoked_at),
        "expires_at": views.iso(token.expires_at),
        "last_used_at": views.iso(token.last_used_at),
    }


def _store(state: State) -> SqlTokenStore:
    return composition.build_token_store(state.settings())


def _now(state: State) -> datetime:
    # The API's clock (the system time, or the shared simulation clock), so that a token's
    # expiry is judged by the same clock that set it.
    return composition.shared_clock(state.settings(), state.now).now()


def _expiry(now: datetime, lifetime: timedelta | None, text: str | None) -> datetime | None:
    if lifetime is None:
        return None
    try:
        expires_at = now + lifetime
    except OverflowError:  # past the year 9999, which a datetime cannot hold
        expires_at = None
    if expires_at is None or expires_at.year > MAX_YEAR:
        raise InvalidInput(
            f"{text!r} ends after the year {MAX_YEAR}; leave --expires-in out for a token "
            "that never expires",
            "expires_in",
        )
    return expires_at


def _lifetime(text: str | None) -> timedelta | None:
    if text is None:
        return None
    try:
        return parse_duration(text)
    except ValueError as error:
        raise InvalidInput(str(error), "expires_in") from None


def _status(token: ApiToken, now: datetime, zone: tzinfo) -> str:
    if token.revoked_at is not None:
        return f"revoked {views.local(token.revoked_at, zone)}"
    if token.expires_at is not None and token.expired(now):
        return f"expired {views.local(token.expires_at, zone)}"
    if token.expires_at is not None:
        return f"live until {views.local(token.expires_at, zone)}"
    return "live"


@tokens_app.command("create")
def tokens_create(
    ctx: typer.Context,
    role: Annotated[
        str,
        typer.Option(
            "--role",
            metavar="ROLE",
            help="admin[:NAME], merchant:ID, buyer:ID or producer:SOURCE.",
        ),
    ],
    name: Annotated[
        str | None, typer.Option(help="A label for people: who holds it, what for.")
    ] = None,
    expires_in: Annotated[
        str | None,
        typer.Option(
            "--expires-in",
            metavar="DURATION",
            help="Expire after this long: 30d, 12h, 2w... (default: never).",
        ),
    ] = None,
    json_output: JsonFlag = False,
) -> None:
    """Create a token and print its secret: shown this once, stored only as a hash."""
    state = state_of(ctx, json_output)
    parsed_role, subject = parse_scope(role)
    if parsed_role is TokenRole.PRODUCER and subject is not None:
        sources = composition.build_sources(state.settings())
        if sources.kind_of(subject) is None:
            known = ", ".join(sorted(sources.sources)) or "none"
            raise InvalidInput(
                f"unknown source {subject!r}: configure it in a sources file "
                f"(AFTERSALES_SOURCES_FILE) first; configured: {known}",
                "role",
            )
    lifetime = _lifetime(expires_in)
    now = _now(state)
    expires_at = _expiry(now, lifetime, expires_in)
    token, secret = _store(state).create(parsed_role.value, subject, name, now, expires_at)
    if state.json:
        print_json({**_token_json(token), "token": secret})
        return
    console = new_console()
    until = (
        f", expires {views.local(expires_at, state.zone())} (in {format_duration(lifetime)})"
        if expires_at is not None and lifetime is not None
        else ""
    )
    console.print(
        f"token {token.id} ({token.scope}) created{until}; its secret, shown only now:",
        markup=False,
    )
    # Plain stdout, not rich: nothing may wrap or style the secret a script copies.
    typer.echo(secret)


@tokens_app.command("list")
def tokens_list(
    ctx: typer.Context,
    revoked: Annotated[bool, typer.Option("--all", help="Include revoked tokens.")] = False,
    json_output: JsonFlag = False,
) -> None:
    """The tokens (never their secrets)."""
    state = state_of(ctx, json_output)
    tokens = _store(state).list(include_revoked=revoked)
    if state.json:
        print_json([_token_json(token) for token in tokens])
        return
    console = new_console()
    if not tokens:
        console.print("no tokens")
        return
    console.print(_tokens_table(tokens, _now(state), state.zone()))


@tokens_app.command("revoke")
def tokens_revoke(
    ctx: typer.Context,
    token_id: Annotated[
        int, typer.Argument(metavar="ID", min=1, max=MAX_ROW_ID, help="The token's id.")
    ],
    json_output: JsonFlag = False,
) -> None:
    """Revoke a token: its next request gets 401."""
    state = state_of(ctx, json_output)
    token = _store(state).revoke(token_id, _now(state))
    if token is None:
        raise NotFound(f"no token {token_id}")
    if state.json:
        print_json(_token_json(token))
        return
    new_console().print(f"token {token.id} ({token.scope}) revoked", markup=False)


def _tokens_table(tokens: list[ApiToken], now: datetime, zone: tzinfo) -> Table:
    """One row per token under a header, times in the display zone, the id column kept."""
    from rich import box
    from rich.table import Table
    from rich.text import Text

    table = Table(box=box.SIMPLE_HEAD)
    widest = max(len(str(token.id)) for token in tokens)
    table.add_column("id", justify="right", no_wrap=True, min_width=max(widest, 2))
    table.add_column("role", overflow="fold")
    table.add_column("name", overflow="fold")
    table.add_column("created")
    table.add_column("status")
    table.add_column("last used")
    for token in tokens:
        last_used = token.last_used_at
        table.add_row(
            str(token.id),
            Text(printable(token.scope)),
            Text(printable(token.name or "")),
            views.local(token.created_at, zone),
            _status(token, now, zone),
            views.local(last_used, zone) if last_used is not None else "never",
        )
    return table
