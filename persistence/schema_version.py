"""Whether a database is at the newest schema, answered without loading Alembic.

Alembic learns the newest revision by importing its script machinery and every migration file
(about 70 ms): a command that only shows a case would pay that on every run. The migrations
here are numbered instead: each file is ``NNNN_<what>.py``, its revision id is ``NNNN`` and it
revises the one numbered before it, so the newest revision is the highest number. A database
whose ``alembic_version`` holds exactly that is current; any other answer (no table, an older
or unknown revision) goes to Alembic (``persistence.migrate``), which upgrades or explains.
tests/integration/test_schema_version.py checks that this agrees with Alembic's own head.
"""

from __future__ import annotations

import re
from functools import cache
from pathlib import Path

import sqlalchemy as sa
from sqlalchemy.engine import Connection
from sqlalchemy.exc import OperationalError, ProgrammingError

VERSIONS_DIR = Path(__file__).resolve().parent / "migrations" / "versions"
_NUMBERED = re.compile(r"^(\d{4})_\w+\.py$")


@cache
def newest_revision() -> str | None:
    """The highest-numbered migration's revision id, from the file names alone."""
    numbers = [
        found.group(1)
        for found in (_NUMBERED.match(path.name) for path in VERSIONS_DIR.iterdir())
        if found
    ]
    return max(numbers, default=None)


def stored_revisions(connection: Connection) -> list[str] | None:
    """The revisions ``alembic_version`` holds; None when the table does not exist yet."""
    try:
        rows = connection.execute(sa.text("SELECT version_num FROM alembic_version"))
        return [str(row[0]) for row in rows]
    except (OperationalError, ProgrammingError):
        # No such table (SQLite says OperationalError, PostgreSQL ProgrammingError): Alembic
        # creates it with the first migration. PostgreSQL aborted the transaction; end it so
        # the connection can be used again.
        connection.rollback()
        return None


def is_current(connection: Connection) -> bool:
    """The database holds exactly the newest revision."""
    newest = newest_revision()
    return newest is not None and stored_revisions(connection) == [newest]
