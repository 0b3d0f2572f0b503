"""``aftersales serve`` and ``aftersales tokens``: the HTTP API and its bearer tokens.

Thin, like the other command modules: ``serve`` builds the app with ``create_app`` and hands it
to uvicorn; ``tokens`` creates, lists and revokes tokens in the database (the secret is printed
once, at creation). ``start_api_process`` is how ``aftersales run`` starts the API beside the
worker: a child process, so the worker's prefork pool never forks a process running a server.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime
from typing import Annotated, Any

import typer
from rich.text import Text

from config.settings import Settings, get_settings
from entrypoints import bootstrap, views
from persistence.tokens import ApiToken, SqlTokenStore
from workflow.clock import Clock, FileClock
from workflow.errors import NotFound

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8000

Host = Annotated[str, typer.Option(help="Interface to listen on (0.0.0.0 for every one).")]
Port = Annotated[int, typer.Option(min=1, max=65535, help="TCP port.")]
JsonFlag = Annotated[
    bool, typer.Option("--json", help="Print JSON (money in integer fen, times in UTC).")
]

tokens_app = typer.Typer(
    no_args_is_help=True, help="Bearer tokens of the HTTP API: create, list, revoke."
)


def _clock(settings: Settings, now: datetime | None) -> Clock:
    # A shared simulation clock file (live demo, end-to-end tests) wins, as in the workers.
    if settings.clock_file is not None:
        return FileClock(str(settings.clock_file))
    return bootstrap.make_clock(now)


def _watch_parent(parent_pid: int) -> None:
    """Stop this server when the process that started it is gone (``aftersales run`` killed
    with SIGKILL cannot stop its child itself)."""

    def watch() -> None:
        while os.getppid() == parent_pid:
            time.sleep(1)
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=watch, name="parent-watch", daemon=True).start()


def serve_api(host: str, port: int, now: datetime | None = None, log_level: str = "info") -> None:
    """Build the app and run it under uvicorn until SIGTERM or Ctrl-C."""
    import uvicorn

    from entrypoints.http.app import create_app

    settings = get_settings()
    app = create_app(settings, _clock(settings, now))
    uvicorn.run(app, host=host, port=port, log_level=log_level.lower(), proxy_headers=True)


def start_api_process(host: str, port: int) -> subprocess.Popen[bytes]:
    """``aftersales serve`` as a child of this process (which it outlives by at most 1 s)."""
    command = [
        sys.executable,
        "-m",
        "entrypoints.cli",
        "serve",
        "--host",
        host,
        "--port",
        str(port),
        "--parent-pid",
        str(os.getpid()),
    ]
    return subprocess.Popen(command)


def stop_api_process(process: subprocess.Popen[bytes], timeout: float = 10.0) -> None:
    if process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def _token_json(token: ApiToken) -> dict[str, Any]:
    return {
        "id": token.id,
        "role": token.scope,
        "name": token.name,
        "created_at": views.iso(token.created_at),
        "revoked_at": views.iso(token.revoked_at),
    }


def _store() -> SqlTokenStore:
    return bootstrap.build_token_store(get_settings())


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
    json_output: JsonFlag = False,
) -> None:
    """Create a token and print its secret: shown this once, stored only as a hash."""
    from entrypoints import cli
    from entrypoints.http.scopes import parse_scope

    state = cli._state(ctx, json_output)
    parsed_role, subject = parse_scope(role)
    token, secret = _store().create(parsed_role.value, subject, name, datetime.now(UTC))
    if state.json:
        cli._print_json({**_token_json(token), "token": secret})
        return
    console = cli._console()
    console.print(Text(f"token {token.id} ({token.scope}) created; its secret, shown only now:"))
    # Plain stdout, not rich: nothing may wrap or style the secret a script copies.
    typer.echo(secret)


@tokens_app.command("list")
def tokens_list(
    ctx: typer.Context,
    revoked: Annotated[bool, typer.Option("--all", help="Include revoked tokens.")] = False,
    json_output: JsonFlag = False,
) -> None:
    """The tokens (never their secrets)."""
    from entrypoints import cli

    state = cli._state(ctx, json_output)
    tokens = _store().list(include_revoked=revoked)
    if state.json:
        cli._print_json([_token_json(token) for token in tokens])
        return
    console = cli._console()
    if not tokens:
        console.print("no tokens")
        return
    for token in tokens:
        status = f"revoked {views.iso(token.revoked_at)}" if token.revoked_at else "live"
        label = f" {token.name}" if token.name else ""
        console.print(Text(f"{token.id:>4}  {token.scope:<32}{label}  ({status})"))


@tokens_app.command("revoke")
def tokens_revoke(
    ctx: typer.Context,
    token_id: Annotated[int, typer.Argument(metavar="ID", help="The token's id.")],
    json_output: JsonFlag = False,
) -> None:
    """Revoke a token: its next request gets 401."""
    from entrypoints import cli

    state = cli._state(ctx, json_output)
    token = _store().revoke(token_id, datetime.now(UTC))
    if token is None:
        raise NotFound(f"no token {token_id}")
    if state.json:
        cli._print_json(_token_json(token))
        return
    cli._console().print(Text(f"token {token.id} ({token.scope}) revoked"))


def register(app: typer.Typer) -> None:
    app.add_typer(tokens_app, name="tokens")

    @app.command()
    def serve(
        ctx: typer.Context,
        host: Host = DEFAULT_HOST,
        port: Port = DEFAULT_PORT,
        log_level: Annotated[str, typer.Option(help="debug, info, warning, error.")] = "info",
        parent_pid: Annotated[int | None, typer.Option(hidden=True)] = None,
    ) -> None:
        """Serve the HTTP API (OpenAPI at /openapi.json, docs at /docs); blocks."""
        from entrypoints import cli

        state = ctx.ensure_object(cli.State)
        if parent_pid is not None:
            _watch_parent(parent_pid)
        serve_api(host, port, state.now, log_level)
