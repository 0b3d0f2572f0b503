"""``aftersales db``: the database schema, migrated like ``alembic`` does it (the same
migrations; ``alembic.ini`` at the repository root runs them with the plain ``alembic`` command).

Alembic and the migration code are imported inside the commands by ``entrypoints.composition``:
``aftersales --help`` and every other command start without them.
"""

from __future__ import annotations

import sys
from typing import Annotated

import typer

from entrypoints import composition
from entrypoints.cli.common import (
    EXIT_OTHER,
    JsonFlag,
    print_error,
    print_json,
    state_of,
)
from entrypoints.cli.inputs import InputError

db_app = typer.Typer(
    no_args_is_help=True,
    help="Database schema: upgrade, downgrade, current, history, check.",
)

#: ``-1`` (one step back) is a revision, not an unknown option.
_NEGATIVE_NUMBERS_ARE_ARGUMENTS = {"ignore_unknown_options": True}


def _say(line: str) -> None:
    # Not wrapped at the terminal's width: a URL or a revision list stays one line to copy.
    typer.echo(line)


@db_app.command("upgrade")
def db_upgrade(
    ctx: typer.Context,
    revision: Annotated[
        str,
        typer.Argument(help="Target: head (the newest), a revision such as 0007, or +1."),
    ] = "head",
    json_output: JsonFlag = False,
) -> None:
    """Apply pending schema migrations (needed once per release on PostgreSQL; the embedded
    SQLite database upgrades itself)."""
    state = state_of(ctx, json_output)
    shown = composition.upgrade_database(state.settings(), revision)
    status = composition.schema_status(state.settings())
    if state.json:
        print_json({"database": shown, "revision": status.revision, "head": status.head})
    elif status.revision == status.head:
        _say(f"database {shown} is at the newest schema ({status.head})")
    else:
        _say(f"database {shown} is at schema {status.revision} (newest: {status.head})")


@db_app.command("downgrade", context_settings=_NEGATIVE_NUMBERS_ARE_ARGUMENTS)
def db_downgrade(
    ctx: typer.Context,
    revision: Annotated[
        str | None,
        typer.Argument(
            help="Target: a revision such as 0007, -1 for one step back, base for none.",
            show_default=False,
        ),
    ] = None,
    yes: Annotated[
        bool, typer.Option("--yes", "-y", help="Do not ask; needed when not on a terminal.")
    ] = False,
    json_output: JsonFlag = False,
) -> None:
    """Undo schema migrations down to REVISION: what they created is dropped, with its data."""
    state = state_of(ctx, json_output)
    if revision is None:
        raise InputError(
            "usage",
            "downgrade needs a target revision: -1 (one step back), a revision such as 0007 "
            "(see `aftersales db history`), or base (drops every table)",
        )
    if not yes:
        interactive = sys.stdin.isatty() and not state.json
        if not interactive:
            raise InputError(
                "confirmation_needed",
                f"downgrading to {revision} drops what the undone migrations created, with its "
                "data; add --yes to go ahead",
            )
        shown = composition.display_url(state.settings().database.url)
        typer.confirm(
            f"Downgrade {shown} to {revision}? What the undone migrations created is dropped, "
            "with its data.",
            abort=True,
        )
    shown = composition.downgrade_database(state.settings(), revision)
    status = composition.schema_status(state.settings())
    if state.json:
        print_json({"database": shown, "revision": status.revision, "head": status.head})
        return
    at = f"at {status.revision}" if status.revision else "empty: no schema (base)"
    message = f"database {shown} is now {at} (newest: {status.head})"
    if composition.is_embedded(state.settings().database.url):
        message += "; the embedded SQLite database upgrades itself again on its next use"
    _say(message)


@db_app.command("current")
def db_current(ctx: typer.Context, json_output: JsonFlag = False) -> None:
    """The database's schema revision, the newest this version has, and what is pending."""
    state = state_of(ctx, json_output)
    status = composition.schema_status(state.settings())
    if state.json:
        print_json(
            {
                "database": status.database,
                "revision": status.revision,
                "head": status.head,
                "pending": status.pending,
            }
        )
        return
    at = f"is at {status.revision}" if status.revision else "has no schema yet"
    if status.revision == status.head:
        line = f"database {status.database} {at}, the newest"
    elif status.pending:
        line = (
            f"database {status.database} {at}; pending: {', '.join(status.pending)} "
            "(run `aftersales db upgrade`)"
        )
    else:
        line = (
            f"database {status.database} {at}, which this version does not know "
            f"(its newest is {status.head}): a newer version migrated it"
        )
    _say(line)


@db_app.command("history")
def db_history(ctx: typer.Context, json_output: JsonFlag = False) -> None:
    """Every migration of this version, newest first."""
    state = state_of(ctx, json_output)
    revisions = composition.migration_history()
    if state.json:
        print_json(
            [
                {
                    "revision": revision.revision,
                    "down_revision": revision.down_revision,
                    "summary": revision.summary,
                }
                for revision in revisions
            ]
        )
        return
    for revision in revisions:
        after = revision.down_revision or "base"
        _say(f"{revision.revision} (after {after})  {revision.summary}")


@db_app.command("check")
def db_check(ctx: typer.Context, json_output: JsonFlag = False) -> None:
    """Compare the database's schema with the tables the code declares (``alembic check``):
    exit 1, listing each difference, when a migration is missing or was edited."""
    state = state_of(ctx, json_output)
    shown, differences = composition.schema_differences(state.settings())
    if not differences:
        if state.json:
            print_json({"database": shown, "differences": []})
        else:
            _say(f"database {shown} matches the code's tables")
        return
    if not state.json:
        for difference in differences:
            _say(f"  {difference}")
    print_error(
        "schema_differs",
        f"database {shown} differs from the code's tables in {len(differences)} place(s): a "
        "migration is missing or does not match persistence/tables.py",
        {"differences": differences},
        state.json,
    )
    raise typer.Exit(EXIT_OTHER)
