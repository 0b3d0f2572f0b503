"""The schema: migrations build what the tables declare, and engines are set up per backend."""

from __future__ import annotations

from pathlib import Path

import pytest
import sqlalchemy as sa
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext

from persistence.db import dispose_engine, make_engine, normalize_url
from persistence.migrate import (
    SchemaError,
    alembic_config,
    current_revision,
    ensure_schema,
    head_revision,
)
from persistence.tables import metadata


def test_migrations_build_exactly_the_declared_schema(database_url: str) -> None:
    with make_engine(database_url).connect() as connection:
        context = MigrationContext.configure(connection, opts={"compare_type": True})
        assert compare_metadata(context, metadata) == []


def test_live_timer_index_is_partial_and_unique(database_url: str) -> None:
    with make_engine(database_url).connect() as connection:
        indexes = {ix["name"]: ix for ix in sa.inspect(connection).get_indexes("timers")}
    live = indexes["uq_timers_live_case_id"]
    assert live["unique"]
    assert live["column_names"] == ["case_id"]
    # compare_metadata does not look at index predicates, so check the one that matters.
    predicate = next(v for k, v in live.get("dialect_options", {}).items() if k.endswith("_where"))
    assert "pending" in str(predicate) and "claimed" in str(predicate)


def test_outbox_indexes_are_partial_on_pending_rows(database_url: str) -> None:
    with make_engine(database_url).connect() as connection:
        indexes = {ix["name"]: ix for ix in sa.inspect(connection).get_indexes("outbox")}
    expected = {
        "ix_outbox_pending_id": (["id"], ["completed_at", "parked_at"]),
        "ix_outbox_unpublished_id": (["id"], ["completed_at", "published_at"]),
        "ix_outbox_in_flight_published_at": (
            ["published_at"],
            ["completed_at", "parked_at", "published_at"],
        ),
        # parked and not completed: what ``aftersales outbox parked`` lists (migration 0010)
        "ix_outbox_parked_id": (["id"], ["completed_at", "parked_at"]),
    }
    assert set(indexes) == set(expected)
    for name, (columns, in_predicate) in expected.items():
        assert indexes[name]["column_names"] == columns
        predicate = next(
            v for k, v in indexes[name].get("dialect_options", {}).items() if k.endswith("_where")
        )
        assert all(column in str(predicate) for column in in_predicate), (name, predicate)
        assert "null" in str(predicate).lower()


def test_ensure_schema_creates_then_leaves_alone(empty_database_url: str) -> None:
    ensure_schema(empty_database_url)
    with make_engine(empty_database_url).connect() as connection:
        assert current_revision(connection) == head_revision()
        assert {"cases", "transitions", "timers", "outbox"} <= set(
            sa.inspect(connection).get_table_names()
        )
    ensure_schema(empty_database_url)


def test_ensure_schema_refuses_a_schema_from_a_newer_version(database_url: str) -> None:
    with make_engine(database_url).begin() as connection:
        connection.exec_driver_sql("UPDATE alembic_version SET version_num = '9999'")
    dispose_engine(database_url)  # forget that this URL was found current
    with pytest.raises(SchemaError, match="revision 9999, which this version does not know"):
        ensure_schema(database_url)


def test_ensure_schema_checks_again_after_the_engine_was_disposed(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/recreated.db"
    ensure_schema(url)
    dispose_engine(url)
    for leftover in tmp_path.glob("recreated.db*"):
        leftover.unlink()
    ensure_schema(url)
    with make_engine(url).connect() as connection:
        assert current_revision(connection) == head_revision()
    dispose_engine(url)


def test_downgrade_to_base_and_back(database_url: str) -> None:
    engine = make_engine(database_url)
    config = alembic_config()
    with engine.begin() as connection:
        config.attributes["connection"] = connection
        command.downgrade(config, "base")
    with engine.connect() as connection:
        assert "cases" not in sa.inspect(connection).get_table_names()
    with engine.begin() as connection:
        config.attributes["connection"] = connection
        command.upgrade(config, "head")
    with engine.connect() as connection:
        assert current_revision(connection) == head_revision()


@pytest.mark.parametrize(
    ("given", "driver"),
    [
        ("postgresql://postgres@127.0.0.1:5432/test", "postgresql+psycopg"),
        ("postgres://postgres@127.0.0.1:5432/test", "postgresql+psycopg"),
        ("postgresql+psycopg://postgres@127.0.0.1/test", "postgresql+psycopg"),
        ("postgresql+psycopg2://postgres@127.0.0.1/test", "postgresql+psycopg2"),
        ("sqlite:///var/aftersales.db", "sqlite"),
    ],
)
def test_url_names_the_psycopg_driver(given: str, driver: str) -> None:
    assert normalize_url(given).drivername == driver


def test_url_rewrite_keeps_everything_else() -> None:
    url = normalize_url("postgres://app:p%40ss@db.internal:6543/cases?sslmode=require")
    assert (url.username, url.password, url.host, url.port, url.database) == (
        "app",
        "p@ss",
        "db.internal",
        6543,
        "cases",
    )
    assert url.query == {"sslmode": "require"}


def test_postgres_engine_uses_psycopg_and_is_cached() -> None:
    # Creating an engine does not connect, so this needs no server.
    engine = make_engine("postgresql://nobody@127.0.0.1:1/none")
    assert engine.dialect.driver == "psycopg"
    # No ping per checkout; recovering from dropped connections is tested in test_sql_disconnect.
    assert not engine.pool._pre_ping
    assert make_engine("postgresql+psycopg://nobody@127.0.0.1:1/none") is engine


def test_sqlite_engine_settings(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/nested/dir/settings.db"
    with make_engine(url).connect() as connection:
        pragma = connection.exec_driver_sql
        assert pragma("PRAGMA journal_mode").scalar() == "wal"
        assert pragma("PRAGMA busy_timeout").scalar() == 30_000
        assert pragma("PRAGMA foreign_keys").scalar() == 1
        assert pragma("PRAGMA synchronous").scalar() == 1  # NORMAL
    dispose_engine(url)
