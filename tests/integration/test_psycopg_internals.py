"""The fence of psycopg's private API (``persistence/psycopg_internals.py``): fails when an
upgrade removes or changes what the fast path relies on."""

from __future__ import annotations

import inspect

import psycopg
import pytest
from psycopg.pq import TransactionStatus
from sqlalchemy.engine import Engine

from persistence import psycopg_internals


def test_psycopg_still_has_the_private_api_the_begin_in_the_pipeline_uses() -> None:
    # _start_query sends no BEGIN of its own while _autocommit is set
    start_query = inspect.getsource(psycopg.Connection._start_query)
    assert "if self._autocommit:" in start_query
    assert "self._get_tx_start_command()" in start_query
    assert callable(getattr(psycopg.Connection, "_get_tx_start_command", None))


def test_our_begin_in_the_pipeline_replaces_psycopgs_own(backend: str, engine: Engine) -> None:
    if backend != "postgres":
        pytest.skip("psycopg only")
    pooled = engine.raw_connection()
    try:
        connection = pooled.dbapi_connection
        assert isinstance(connection, psycopg.Connection)
        assert connection._autocommit is False
        notices: list[str] = []
        connection.add_notice_handler(lambda notice: notices.append(notice.message_primary or ""))
        # given the BEGIN psycopg would send
        begin = psycopg_internals.begin_command(connection)
        assert begin == b"BEGIN"

        # when it goes out in one pipeline with the first statement
        with psycopg_internals.own_begin(connection), connection.pipeline():
            cursor = connection.cursor()
            cursor.execute(begin)
            cursor.execute("SELECT 1")
        # then psycopg sent no BEGIN of its own (a second one would warn), and the transaction
        # is open with psycopg's own flag back as it was
        assert notices == []
        assert connection.info.transaction_status is TransactionStatus.INTRANS
        assert connection._autocommit is False
        connection.rollback()

        # (the check above would see psycopg's own BEGIN: without the fence, it warns)
        with connection.pipeline():
            cursor.execute(begin)
        assert any("already a transaction in progress" in notice for notice in notices)
        connection.rollback()

        # and in autocommit mode there is no BEGIN to send
        connection.autocommit = True
        assert psycopg_internals.begin_command(connection) is None
        connection.autocommit = False
    finally:
        pooled.close()
