"""Alembic environment: run by ``persistence.migrate`` (``aftersales db ...``) or by the plain
``alembic`` command (``alembic.ini`` at the repository root) to apply and check migrations.

The database, first found wins:

1. an open connection in ``config.attributes["connection"]``: ``persistence.migrate`` passes one
   so the command runs inside its transaction, under its lock;
2. ``alembic -x url=...`` on the command line, or ``sqlalchemy.url`` set by a caller's config;
3. the service's own setting, ``AFTERSALES_DATABASE_URL`` (default: the SQLite file
   ``./var/aftersales.db``), so ``alembic`` and ``aftersales`` always mean the same database.
"""

from __future__ import annotations

from logging.config import fileConfig

from alembic import context
from alembic.util import CommandError
from pydantic import ValidationError
from sqlalchemy.engine import Connection
from sqlalchemy.exc import ArgumentError

from config.settings import DatabaseSettings
from persistence.db import make_engine
from persistence.migrate import migration_transaction
from persistence.tables import metadata

config = context.config


#: Tables of the fake gateways, which simulate outside systems and may share the database.
_NOT_OURS = frozenset({"fake_gateway_payments", "fake_notifications"})


def _ours(obj: object, name: str | None, type_: str, reflected: bool, compare_to: object) -> bool:
    return not (type_ == "table" and name in _NOT_OURS)


def _run(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=metadata,
        compare_type=True,
        compare_server_default=True,
        # SQLite cannot ALTER most things in place; batch mode rebuilds the table instead.
        render_as_batch=connection.dialect.name == "sqlite",
        include_object=_ours,
    )
    with context.begin_transaction():
        context.run_migrations()


def _database_url() -> str:
    url = context.get_x_argument(as_dictionary=True).get("url")
    url = url or config.get_main_option("sqlalchemy.url")
    if url:
        return url
    try:
        return DatabaseSettings().url
    except ValidationError as error:
        first = error.errors()[0]
        raise CommandError(f"AFTERSALES_DATABASE_URL: {first['msg']}") from None


def run_migrations_online() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        _run(connection)
        return
    if config.config_file_name is not None:
        # The alembic command line: its log lines ("Running upgrade 0007 -> 0008") on stderr.
        fileConfig(config.config_file_name, disable_existing_loggers=False)
    url = _database_url()
    try:
        engine = make_engine(url)
    except (ArgumentError, ImportError) as error:
        raise CommandError(f"unusable database URL: {error}") from None
    with migration_transaction(engine) as connection:
        _run(connection)


if context.is_offline_mode():
    raise CommandError("offline (--sql) migrations are not supported; run against a database")
run_migrations_online()
