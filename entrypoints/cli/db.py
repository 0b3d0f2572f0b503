"""``aftersales db``: the database schema."""

from __future__ import annotations

import typer
from rich.text import Text

from entrypoints import composition
from entrypoints.cli.common import JsonFlag, new_console, print_json, state_of

db_app = typer.Typer(no_args_is_help=True, help="Database schema.")


@db_app.command("upgrade")
def db_upgrade(ctx: typer.Context, json_output: JsonFlag = False) -> None:
    """Apply pending schema migrations (needed once for PostgreSQL; SQLite does it itself)."""
    state = state_of(ctx, json_output)
    shown = composition.upgrade_database(state.settings())
    if state.json:
        print_json({"database": shown, "schema": "current"})
    else:
        new_console().print(Text(f"database {shown} is at the newest schema"))
