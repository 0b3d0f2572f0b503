"""Schema migrations, run from code: no ``alembic.ini`` is needed in the working directory.

``upgrade(url)`` applies every pending migration; ``ensure_schema(url)`` does so only when the
database is behind, and is what the embedded SQLite default calls on first use.
"""

from __future__ import annotations

import threading
from functools import cache
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy.engine import URL, Connection, Engine

from persistence.db import make_engine, normalize_url

MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"

#: Any constant works; it only has to be the same for every process migrating this database.
_PG_MIGRATION_LOCK = 0x61667465  # "afte"

#: Databases known to be at head, by URL, with the engine that checked: an engine disposed and
#: made anew (a file deleted and recreated, say) is checked again.
_current: dict[str, Engine] = {}
_current_lock = threading.Lock()


def alembic_config(url: str | URL | None = None) -> Config:
    """An alembic ``Config`` pointing at the packaged migrations (for the CLI-like commands)."""
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    if url is not None:
        rendered = normalize_url(url).render_as_string(hide_password=False)
        # ConfigParser interpolation would choke on a % in the password.
        config.set_main_option("sqlalchemy.url", rendered.replace("%", "%%"))
    return config


class SchemaError(RuntimeError):
    """The database's schema is one this code cannot bring to head (a newer version made it)."""


@cache
def head_revision() -> str | None:
    return ScriptDirectory.from_config(alembic_config()).get_current_head()


@cache
def _known_revisions() -> frozenset[str]:
    scripts = ScriptDirectory.from_config(alembic_config())
    return frozenset(script.revision for script in scripts.walk_revisions())


def current_revision(connection: Connection) -> str | None:
    return MigrationContext.configure(connection).get_current_revision()


def upgrade(url: str | URL) -> None:
    """Bring the database at ``url`` to the newest schema (``alembic upgrade head``)."""
    engine = make_engine(url)
    config = alembic_config()
    with engine.begin() as connection:
        if connection.dialect.name == "postgresql":
            # Two processes starting at once must not both create the tables. DDL is
            # transactional, so the second one then finds the schema at head and does nothing.
            connection.exec_driver_sql(f"SELECT pg_advisory_xact_lock({_PG_MIGRATION_LOCK})")
        # On SQLite the transaction began with BEGIN IMMEDIATE, which serialises the same way.
        config.attributes["connection"] = connection
        command.upgrade(config, "head")
    with _current_lock:
        _current[_key(url)] = engine


def ensure_schema(url: str | URL) -> None:
    """Upgrade the database only if it is not at head; checked once per process and engine."""
    key = _key(url)
    engine = make_engine(url)
    if _current.get(key) is engine:
        return
    with engine.connect() as connection:
        revision = current_revision(connection)
    if revision is not None and revision not in _known_revisions():
        raise SchemaError(
            f"the database is at schema revision {revision}, which this version does not know "
            f"(its newest is {head_revision()}); a newer version migrated it"
        )
    if revision != head_revision():
        upgrade(url)
    with _current_lock:
        _current[key] = engine


def _key(url: str | URL) -> str:
    return normalize_url(url).render_as_string(hide_password=False)
