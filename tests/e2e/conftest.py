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
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from config.settings import sqlite_url
from entrypoints.cli.main import app

from .support import NOW, CliFn, Run, application, import_order


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
def submitted(invoke: CliFn, tmp_path: Path) -> Callable[..., int]:
    """Submit an application (``application(**overrides)``) at ``NOW``; returns the case id."""

    def submit(now: str = NOW, **overrides: Any) -> int:
        app = application(**overrides)
        import_order(invoke, app)
        path = tmp_path / "application.json"
        path.write_text(json.dumps(app), encoding="utf-8")
        result = invoke("--now", now, "case", "submit", str(path), "--json")
        assert result.code == 0, result.stderr
        case_id = result.json()["id"]
        assert isinstance(case_id, int)
        return case_id

    return submit
