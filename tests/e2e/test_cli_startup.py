"""Start-up cost as a property, not a timing: which libraries a command loads.

``--help`` must load no database, web, task-queue or validation library, and ``case show`` on
SQLite no Alembic, Celery or web stack (bench/cli_startup.py measures what that buys). A
process of its own per command, since a test process has them all loaded already.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from config.settings import sqlite_url

#: Runs the CLI in-process on ``sys.argv[1:]`` and prints the modules it loaded (and their
#: top-level packages).
PROBE = """
import json, sys
from entrypoints.cli.main import app
try:
    app(sys.argv[1:], prog_name="aftersales")
except SystemExit:
    pass
names = {*sys.modules, *(name.split(".")[0] for name in sys.modules)}
print(json.dumps(sorted(names)), file=sys.stderr)
"""
WEB_AND_QUEUE = {"alembic", "celery", "kombu", "redis", "fastapi", "starlette", "uvicorn"}


def loaded(args: list[str], env: dict[str, str], cwd: Path) -> set[str]:
    done = subprocess.run(
        [sys.executable, "-c", PROBE, *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=cwd,
        timeout=60,
    )
    return set(json.loads(done.stderr.splitlines()[-1]))


@pytest.mark.parametrize(
    "args",
    [
        ["--help"],
        ["case", "--help"],
        ["timers", "run-due", "--help"],
        ["tokens"],
        ["worker", "--help"],
        ["serve", "--help"],
    ],
)
def test_help_loads_no_database_web_queue_or_validation_library(
    env: dict[str, str], tmp_path: Path, args: list[str]
) -> None:
    modules = loaded(args, env, tmp_path)
    assert "typer" in modules, "the probe did not run the CLI"
    heavy = WEB_AND_QUEUE | {"sqlalchemy", "sqlmodel", "transitions", "psycopg", "rich.table"}
    if args == ["--help"]:
        # A command's own help builds its options, which typer (0.29) types with pydantic.
        heavy.add("pydantic")
    assert modules.isdisjoint(heavy), sorted(modules & heavy)


def test_case_show_on_sqlite_loads_no_alembic_celery_or_web_stack(
    env: dict[str, str], tmp_path: Path
) -> None:
    # given a SQLite database already at the newest schema (its creation needs Alembic)
    env = {**env, "AFTERSALES_DATABASE_URL": sqlite_url(tmp_path / "startup.db")}
    assert "alembic" in loaded(["db", "upgrade"], env, tmp_path)

    # when a case is shown (none exists: the whole read path runs all the same)
    modules = loaded(["case", "show", "1"], env, tmp_path)

    # then the database was read without Alembic, and nothing of the workers or the API
    assert {"sqlalchemy", "workflow"} <= modules, "the probe did not read the database"
    assert modules.isdisjoint(WEB_AND_QUEUE), sorted(modules & WEB_AND_QUEUE)
