"""``aftersales db``: upgrade, downgrade, current, history and check, as an operator runs them."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
from itertools import pairwise
from pathlib import Path

from persistence.migrate import head_revision

from .support import CliFn, one_line_error

HEAD = head_revision()


def current(invoke: CliFn) -> str | None:
    result = invoke("db", "current", "--json")
    assert result.code == 0, result.stderr
    revision = result.json()["revision"]
    assert revision is None or isinstance(revision, str)
    return revision


def test_current_on_an_empty_database_lists_every_migration_as_pending(invoke: CliFn) -> None:
    # when
    result = invoke("db", "current", "--json")

    # then nothing was created, and the whole chain is pending
    assert result.code == 0, result.stderr
    history = [entry["revision"] for entry in invoke("db", "history", "--json").json()]
    assert result.json()["revision"] is None
    assert result.json()["head"] == HEAD
    assert result.json()["pending"] == list(reversed(history))
    assert "has no schema yet; pending: 0001" in invoke("db", "current").stdout


def test_upgrade_to_a_revision_then_to_head(invoke: CliFn) -> None:
    # given a database migrated part of the way
    assert invoke("db", "upgrade", "0006").code == 0
    status = invoke("db", "current", "--json").json()
    assert status["revision"] == "0006"
    assert status["pending"][0] == "0007"
    assert "run `aftersales db upgrade`" in invoke("db", "current").stdout

    # when upgraded without a target
    result = invoke("db", "upgrade")

    # then it is at the newest
    assert result.code == 0, result.stderr
    assert f"newest schema ({HEAD})" in result.stdout
    assert invoke("db", "current", "--json").json()["pending"] == []


def test_downgrade_needs_an_explicit_target(invoke: CliFn) -> None:
    # given
    assert invoke("db", "upgrade").code == 0

    # when
    message = one_line_error(invoke("db", "downgrade", "--yes"), 2)

    # then it says what a target looks like, and nothing moved
    assert "downgrade needs a target revision: -1 (one step back)" in message
    assert current(invoke) == HEAD


def test_downgrade_without_a_terminal_needs_yes(cli: CliFn, invoke: CliFn) -> None:
    # given
    assert invoke("db", "upgrade").code == 0

    # when run from a script (stdin is not a terminal)
    message = one_line_error(cli("db", "downgrade", "-1", input=""), 2)

    # then
    assert "drops what the undone migrations created, with its data; add --yes" in message
    assert current(invoke) == HEAD


def test_downgrade_one_step_then_upgrade_again(cli: CliFn, invoke: CliFn) -> None:
    # given
    assert invoke("db", "upgrade").code == 0
    previous = invoke("db", "history", "--json").json()[0]["down_revision"]

    # when (a real process: "-1" must reach the command as a revision, not an option)
    result = cli("db", "downgrade", "-1", "--yes")

    # then
    assert result.code == 0, result.stderr
    assert f"now at {previous} (newest: {HEAD})" in result.stdout
    assert current(invoke) == previous
    assert invoke("db", "upgrade").code == 0
    assert current(invoke) == HEAD


def test_downgrade_to_base_empties_the_schema(invoke: CliFn, tmp_path: Path) -> None:
    # given
    assert invoke("db", "upgrade").code == 0

    # when
    result = invoke("db", "downgrade", "base", "--yes", "--json")

    # then only alembic's own bookkeeping table is left
    assert result.code == 0, result.stderr
    assert result.json()["revision"] is None
    with sqlite3.connect(tmp_path / "var" / "cases.db") as connection:
        tables = {row[0] for row in connection.execute("SELECT name FROM sqlite_master")}
    assert "cases" not in tables


def test_an_unknown_revision_is_one_line_and_changes_nothing(invoke: CliFn) -> None:
    # given
    assert invoke("db", "upgrade").code == 0

    # when
    down = one_line_error(invoke("db", "downgrade", "0999", "--yes"), 2)
    up = one_line_error(invoke("db", "upgrade", "nonsense"), 2)

    # then
    assert "0999" in down and "aftersales db history" in down
    assert "nonsense" in up
    assert current(invoke) == HEAD


def test_history_is_newest_first_and_chained(invoke: CliFn) -> None:
    # when
    result = invoke("db", "history", "--json")

    # then every migration follows the next one in the list, down to the first
    assert result.code == 0, result.stderr
    entries = result.json()
    assert entries[0]["revision"] == HEAD
    for newer, older in pairwise(entries):
        assert newer["down_revision"] == older["revision"]
    assert entries[-1]["down_revision"] is None
    assert all(entry["summary"] for entry in entries)
    assert invoke("db", "history").stdout.startswith(f"{HEAD} (after ")


def test_check_passes_on_a_migrated_database(invoke: CliFn) -> None:
    # given
    assert invoke("db", "upgrade").code == 0

    # when
    result = invoke("db", "check")

    # then
    assert result.code == 0, result.stderr
    assert "matches the code's tables" in result.stdout
    assert "No new upgrade operations" not in result.stdout


def test_check_refuses_a_database_that_is_behind(invoke: CliFn) -> None:
    # given
    assert invoke("db", "upgrade", "0006").code == 0

    # when
    message = one_line_error(invoke("db", "check"), 1)

    # then
    assert f"at schema revision 0006, not at the newest, {HEAD}; upgrade it first" in message


def test_check_lists_what_differs_from_the_code(invoke: CliFn, tmp_path: Path) -> None:
    # given a migrated database from which someone dropped an index by hand
    assert invoke("db", "upgrade").code == 0
    with sqlite3.connect(tmp_path / "var" / "cases.db") as connection:
        connection.execute("DROP INDEX ix_outbox_pending_id")

    # when
    result = invoke("db", "check")
    as_json = invoke("db", "check", "--json")

    # then the difference is named, with exit 1
    assert result.code == 1
    assert "add_index ix_outbox_pending_id on outbox" in result.stdout
    assert "differs from the code's tables in 1 place(s)" in result.stderr
    assert as_json.code == 1
    assert as_json.error()["differences"] == ["add_index ix_outbox_pending_id on outbox"]


def test_the_db_commands_load_alembic_only_when_they_run() -> None:
    # when the CLI's modules are imported (what `aftersales --help` does)
    probe = (
        "import sys, entrypoints.cli.main, entrypoints.cli.db; "
        "print(sorted(m for m in sys.modules if m.split('.')[0] == 'alembic'))"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=60, check=True
    )

    # then
    assert done.stdout.strip() == "[]"
