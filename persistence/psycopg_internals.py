"""psycopg's private API, fenced: sending a transaction's BEGIN in one pipeline with its first
statement (``checkout.Checkout``).

Relies on (psycopg 3.3.9, ``psycopg/_connection_base.py``): ``BaseConnection._start_query``
sends its own BEGIN, alone, before a transaction's first statement unless ``_autocommit`` is set
(``if self._autocommit: return``); ``_get_tx_start_command()`` is the BEGIN it would send
(isolation level, read-only, deferrable included). Setting the public ``autocommit`` instead is
refused inside a transaction and costs a round trip of its own.
Why: psycopg's BEGIN waits for its answer, one round trip per unit of work. In the pipeline,
``python -m bench.ingest_batch --backend postgres --rounds 3 --sizes 1,50`` went from 782 to
806 single events/s (commit 4b9aad9, docs/adr/0001-fast-sql-path.md).
Delete when psycopg pipelines its implicit BEGIN with the first statement itself, or when the
test ``tests/integration/test_psycopg_internals.py`` fails after an upgrade (then the fast path
falls back to psycopg's own BEGIN: correct, one round trip slower).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any


def begin_command(connection: Any) -> bytes | None:
    """The BEGIN psycopg would send before the next statement of ``connection``; None when it
    sends none (autocommit) or the private API is gone (then let psycopg begin)."""
    begin = getattr(connection, "_get_tx_start_command", None)
    if begin is None or connection.autocommit or not hasattr(connection, "_autocommit"):
        return None
    command: bytes = begin()
    return command


@contextmanager
def own_begin(connection: Any) -> Iterator[None]:
    """Inside the block psycopg sends no BEGIN of its own: the caller sends ``begin_command``.
    Every later statement, the commit and the rollback go by the server's transaction status,
    which that BEGIN sets, so the flag is held only for the block."""
    connection._autocommit = True
    try:
        yield
    finally:
        connection._autocommit = False
