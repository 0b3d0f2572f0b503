"""Alembic environment: run by ``persistence.migrate`` (or the alembic CLI) to apply migrations.

``persistence.migrate`` passes an open connection in ``config.attributes["connection"]`` so the
upgrade runs inside its transaction; otherwise the URL comes from ``sqlalchemy.url``.
"""

from __future__ import annotations

from alembic import context
from sqlalchemy.engine import Connection

from persistence.db import make_engine
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
        # SQLite cannot ALTER most things in place; batch mode rebuilds the table instead.
        render_as_batch=connection.dialect.name == "sqlite",
        include_object=_ours,
    )
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        _run(connection)
        return
    url = config.get_main_option("sqlalchemy.url")
    if not url:
        raise RuntimeError("no database: set sqlalchemy.url or pass a connection")
    with make_engine(url).connect() as connection:
        _run(connection)
        connection.commit()


if context.is_offline_mode():
    raise RuntimeError("offline (--sql) migrations are not supported; run against a database")
run_migrations_online()
