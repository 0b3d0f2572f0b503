"""The plain ``alembic`` command, run from the repository root as an operator would: it finds
``alembic.ini``, takes the database from ``AFTERSALES_DATABASE_URL``, and ``alembic check``
agrees with the tables the code declares (on SQLite and PostgreSQL) or names what differs."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import sqlalchemy as sa

from persistence.db import make_engine
from persistence.migrate import current_revision, head_revision

REPOSITORY = Path(__file__).resolve().parents[2]
ALEMBIC_FAILED = 255


def alembic(
    *args: str, url: str | None, cwd: Path = REPOSITORY
) -> subprocess.CompletedProcess[str]:
    environment = {k: v for k, v in os.environ.items() if k != "AFTERSALES_DATABASE_URL"}
    if url is not None:
        environment["AFTERSALES_DATABASE_URL"] = url
    command = Path(sys.executable).with_name("alembic")
    return subprocess.run(
        [str(command), *args], capture_output=True, text=True, env=environment, cwd=cwd, timeout=120
    )


def test_upgrade_current_and_check_on_a_fresh_database(empty_database_url: str) -> None:
    # when
    upgraded = alembic("upgrade", "head", url=empty_database_url)
    shown = alembic("current", url=empty_database_url)
    checked = alembic("check", url=empty_database_url)

    # then
    assert upgraded.returncode == 0, upgraded.stderr
    assert "Running upgrade  -> 0001" in upgraded.stderr
    assert shown.returncode == 0, shown.stderr
    assert f"{head_revision()} (head)" in shown.stdout
    assert checked.returncode == 0, checked.stderr
    assert "No new upgrade operations detected." in checked.stdout
    with make_engine(empty_database_url).connect() as connection:
        assert current_revision(connection) == head_revision()


def test_check_fails_naming_what_the_database_lacks(empty_database_url: str) -> None:
    # given a migrated database without one of the declared indexes
    assert alembic("upgrade", "head", url=empty_database_url).returncode == 0
    with make_engine(empty_database_url).begin() as connection:
        connection.execute(sa.text("DROP INDEX ix_outbox_pending_id"))

    # when
    checked = alembic("check", url=empty_database_url)

    # then (alembic's exit code for a failed command is 255)
    assert checked.returncode == ALEMBIC_FAILED
    assert "FAILED: New upgrade operations detected" in checked.stdout
    assert "ix_outbox_pending_id" in checked.stdout


def test_without_a_url_it_uses_the_services_default_file(tmp_path: Path) -> None:
    # when alembic runs in another directory, pointed at the configuration
    upgraded = alembic(
        "-c", str(REPOSITORY / "alembic.ini"), "upgrade", "head", url=None, cwd=tmp_path
    )

    # then it migrated ./var/aftersales.db, the file the service uses by default there
    assert upgraded.returncode == 0, upgraded.stderr
    assert (tmp_path / "var" / "aftersales.db").is_file()


def test_x_url_names_another_database(tmp_path: Path) -> None:
    # given the environment names one database
    named = f"sqlite:///{tmp_path / 'named.db'}"
    other = f"sqlite:///{tmp_path / 'other.db'}"

    # when the command line names another
    done = alembic("-x", f"url={other}", "upgrade", "head", url=named)

    # then that one was migrated, and only that one
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "other.db").is_file()
    assert not (tmp_path / "named.db").exists()


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("not a url", "FAILED: unusable database URL"),
        ("mysql://db/x", "FAILED: unusable database URL"),
    ],
)
def test_a_bad_url_is_one_line(url: str, message: str) -> None:
    # when
    done = alembic("current", url=url)

    # then
    assert done.returncode == ALEMBIC_FAILED
    assert done.stdout.startswith(message)
    assert len(done.stdout.splitlines()) == 1
    assert "Traceback" not in done.stdout + done.stderr
