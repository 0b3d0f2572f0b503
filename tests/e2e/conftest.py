"""Run ``aftersales`` as a user would: real processes on a throwaway SQLite file.

``cli`` starts the installed console script in a subprocess (what a shell does); ``invoke`` runs
the same Typer app in-process with ``CliRunner`` for the many cheap checks. Both get an
environment whose ``AFTERSALES_DATABASE_URL`` points into the test's own directory.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from config.policy import load_policy
from config.settings import sqlite_url
from entrypoints.cli.main import app
from entrypoints.samples import import_orders_for
from persistence.db import make_engine
from persistence.migrate import ensure_schema
from persistence.unit_of_work import SqlUnitOfWorkFactory
from workflow.clock import FakeClock
from workflow.orders_service import OrderService

from .support import NOW, CliFn, Run, application


def _command() -> list[str]:
    script = Path(sys.executable).with_name("aftersales")
    return [str(script)] if script.exists() else [sys.executable, "-m", "entrypoints.cli"]


@pytest.fixture
def env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """The environment of both runners: a fresh SQLite file, the default policy."""
    url = sqlite_url(tmp_path / "var" / "cases.db")
    monkeypatch.setenv("AFTERSALES_DATABASE_URL", url)
    monkeypatch.delenv("AFTERSALES_POLICY_FILE", raising=False)
    monkeypatch.chdir(tmp_path)
    environment = dict(os.environ)
    # Rich would otherwise size its tables by the terminal the tests run in, or colour them.
    environment.update({"NO_COLOR": "1", "TERM": "dumb"})
    return environment


@pytest.fixture
def cli(env: dict[str, str], tmp_path: Path) -> CliFn:
    """``cli("case", "show", "1", input=...)``: the console script in a real process."""

    def run(*args: str, input: str | None = None) -> Run:
        done = subprocess.run(
            [*_command(), *args],
            input=input,
            capture_output=True,
            text=True,
            env=env,
            cwd=tmp_path,
            timeout=60,
        )
        return Run(done.returncode, done.stdout, done.stderr)

    return run


@pytest.fixture
def invoke(env: dict[str, str]) -> CliFn:
    """``invoke("case", "show", "1")``: the same app in-process (fast, same code path)."""
    runner = CliRunner()

    def run(*args: str, input: str | None = None) -> Run:
        result = runner.invoke(app, list(args), input=input, env={"NO_COLOR": "1"})
        if result.exception is not None and not isinstance(result.exception, SystemExit):
            raise result.exception
        return Run(result.exit_code, result.stdout, result.stderr)

    return run


@pytest.fixture
def import_orders(env: dict[str, str]) -> Callable[..., None]:
    """``import_orders(app, ...)``: the orders of record these applications describe, written
    into the test's database in-process (as the order system would, before a buyer applies)."""

    def run(*apps: dict[str, Any]) -> None:
        url = os.environ["AFTERSALES_DATABASE_URL"]  # as monkeypatched, like the CLI reads it
        ensure_schema(url)
        clock = FakeClock(datetime.fromisoformat(NOW))
        orders = OrderService(SqlUnitOfWorkFactory(make_engine(url)), clock, load_policy())
        result = import_orders_for(orders, list(apps))
        assert not result.refused, result

    return run


@pytest.fixture
def submitted(
    invoke: CliFn, tmp_path: Path, import_orders: Callable[..., None]
) -> Callable[..., int]:
    """Submit an application (``application(**overrides)``) at ``NOW``, its order imported
    first; returns the case id."""

    def submit(now: str = NOW, **overrides: Any) -> int:
        import_orders(application(**overrides))
        path = tmp_path / "application.json"
        path.write_text(json.dumps(application(**overrides)), encoding="utf-8")
        result = invoke("--now", now, "case", "submit", str(path), "--json")
        assert result.code == 0, result.stderr
        case_id = result.json()["id"]
        assert isinstance(case_id, int)
        return case_id

    return submit
