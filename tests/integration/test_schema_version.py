"""The schema check without Alembic (persistence/schema_version.py) agrees with Alembic."""

from __future__ import annotations

from persistence.db import make_engine
from persistence.migrate import ensure_schema, head_revision
from persistence.schema_version import is_current, newest_revision, stored_revisions


def test_the_newest_file_number_is_alembics_head() -> None:
    # the convention the fast check relies on: NNNN_<what>.py has revision NNNN, in a line
    assert newest_revision() == head_revision()


def test_a_migrated_database_is_current(database_url: str) -> None:
    with make_engine(database_url).connect() as connection:
        assert stored_revisions(connection) == [head_revision()]
        assert is_current(connection)


def test_an_empty_database_is_not_current(empty_database_url: str) -> None:
    with make_engine(empty_database_url).connect() as connection:
        assert stored_revisions(connection) is None
        assert not is_current(connection)
    ensure_schema(empty_database_url)
    with make_engine(empty_database_url).connect() as connection:
        assert is_current(connection)


def test_an_older_or_unknown_revision_is_not_current(database_url: str) -> None:
    for revision in ("0001", "9999"):
        with make_engine(database_url).begin() as connection:
            connection.exec_driver_sql(f"UPDATE alembic_version SET version_num = '{revision}'")
        with make_engine(database_url).connect() as connection:
            assert not is_current(connection), revision
