"""A unit of work's pooled DBAPI connection: ``Checkout``.

One cursor reused by every statement, the transaction begun and ended through the dialect's
hooks, a SQLAlchemy ``Connection`` only when asked for (docs/adr/0001-fast-sql-path.md). On
PostgreSQL a write whose answer nobody reads is *deferred*: sent in one psycopg pipeline with the
next statement that needs an answer, or the COMMIT; its error surfaces there (``deferred_write =
True``). A *checked* deferred write that misses fails the transaction until a rollback to a
savepoint before it. A first statement that meets a dropped connection runs again once on a
fresh one.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, NoReturn

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Dialect, Engine
from sqlalchemy.pool import PoolProxiedConnection

from persistence import psycopg_internals, sqlalchemy_internals

#: ``PoolProxiedConnection.info`` key of the cursor kept with each DBAPI connection. SQLAlchemy
#: clears that dict when it replaces the DBAPI connection (``_ConnectionRecord.get_connection``),
#: so a cursor never outlives its connection.
_CURSOR = "aftersales.fastsql.cursor"
#: ... and of the second cursor that carries deferred writes (whose results nobody reads).
_WRITE_CURSOR = "aftersales.fastsql.write_cursor"
#: ... and of the cursors of checked deferred writes: one per write in a pipeline, since a
#: cursor keeps only its last result.
_CHECK_CURSORS = "aftersales.fastsql.check_cursors"

#: A checked deferred write: the rowcount it must have, the exception a miss raises, and the
#: savepoint count when it was queued (a rollback to a savepoint numbered up to that undoes it).
_Check = tuple[int, Callable[[], Exception], int]


class Checkout:
    """One pooled DBAPI connection, held for one unit of work.

    Statements share one cursor (psycopg builds an adapters map per cursor: about 28 µs each).
    Until ``connection`` is asked for, the transaction is begun, committed and rolled back on the
    DBAPI connection through the dialect's hooks, as ``Connection`` would; from then on the
    ``Connection`` owns it, so Core statements, savepoints and these statements share it.
    """

    __slots__ = (
        "_begun",
        "_connection",
        "_cursor",
        "_dbapi_error",
        "_dialect",
        "_ended",
        "_engine",
        "_failed_check",
        "_fresh",
        "_pipelines",
        "_pooled",
        "_queued",
        "_savepoints",
    )

    def __init__(self, engine: Engine) -> None:
        self._engine = engine
        self._dialect = engine.dialect
        self._dbapi_error: Any = engine.dialect.loaded_dbapi.Error
        self._cursor: Any = None
        self._begun = False
        self._fresh = True
        #: No transaction is open on the DBAPI connection (none begun, or it ended cleanly).
        self._ended = True
        self._connection: Connection | None = None
        self._savepoints = 0
        self._pooled: PoolProxiedConnection | None = None
        self._pipelines = engine.dialect.driver == "psycopg"
        #: Deferred writes not sent yet: (sql, parameters, many, check or None).
        self._queued: list[tuple[str, Any, bool, _Check | None]] = []
        #: The check that missed, while the transaction may not commit.
        self._failed_check: _Check | None = None
        self._check_out()

    # -- the hot path ---------------------------------------------------------------------------
    def run(self, sql: str, parameters: Any, many: bool = False) -> Any:
        """Execute inside the transaction (begun first if needed); returns the cursor."""
        if self._queued:
            return self._send_queued(lambda: send(self._cursor, sql, parameters, many), sql)
        if self._begun:
            cursor, sender = self._cursor, send
        else:
            cursor = self._begin()
            sender = self._send_with_begin if self._pipelines else send
        try:
            sender(cursor, sql, parameters, many)
        except self._dbapi_error as exc:
            cursor = self._retry(exc, cursor, sql, parameters, many)
        self._fresh = False
        return cursor

    def defer(self, sql: str, parameters: Any, many: bool = False) -> None:
        """A write whose result nobody reads: on PostgreSQL it goes out with the next statement
        that needs an answer (or the COMMIT); elsewhere, and as a transaction's first
        statement (which may meet a dropped connection and be retried), it runs now."""
        if not self._deferring():
            self.run(sql, parameters, many)
            return
        self._queued.append((sql, parameters, many, None))

    def defer_checked(
        self, sql: str, parameters: Any, rows: int, miss: Callable[[], Exception]
    ) -> None:
        """``defer`` a write that must change exactly ``rows`` rows, else ``miss()`` is raised:
        here when it runs at once, at the statement it goes out with when deferred, and at
        the commit after that (the transaction has failed, see the module's notes)."""
        if not self._deferring():
            if self.run(sql, parameters).rowcount != rows:
                raise miss()
            return
        self._queued.append((sql, parameters, False, (rows, miss, self._savepoints)))

    def _deferring(self) -> bool:
        return self._pipelines and not self._fresh and self._begun and self._connection is None

    def _send_with_begin(self, cursor: Any, sql: str, parameters: Any, many: bool) -> None:
        """A transaction's first statement, with the BEGIN in one pipeline: one round trip
        (psycopg would send its BEGIN alone and wait; ``persistence/psycopg_internals.py``)."""
        connection = cursor.connection
        begin = psycopg_internals.begin_command(connection)
        if begin is None:
            send(cursor, sql, parameters, many)
            return
        with psycopg_internals.own_begin(connection), connection.pipeline():
            self._write_cursor().execute(begin)
            send(cursor, sql, parameters, many)

    def _send_queued(self, then: Callable[[], None], what: str) -> Any:
        """Send the deferred writes and ``then`` in one pipeline, then check the checked ones;
        returns the cursor."""
        queued, self._queued = self._queued, []
        connection = self._live_pooled().dbapi_connection
        writer = self._write_cursor()
        checked: list[tuple[Any, _Check]] = []
        try:
            with connection.pipeline():  # type: ignore[union-attr]
                for sql, parameters, many, check in queued:
                    if check is None:
                        send(writer, sql, parameters, many)
                    else:
                        cursor = self._check_cursor(len(checked))
                        cursor.execute(sql, parameters)
                        checked.append((cursor, check))
                then()
        except self._dbapi_error as exc:
            sent = "; ".join(dict.fromkeys(sql for sql, _, _, _ in queued))
            try:
                self._fail(exc, f"{sent}; {what}", None, writer)
            except sa.exc.DBAPIError as error:
                error.deferred_write = True  # type: ignore[attr-defined]
                raise
        for cursor, check in checked:
            if cursor.rowcount != check[0] and self._failed_check is None:
                self._failed_check = check
        if self._failed_check is not None and checked:
            raise self._failed_check[1]()
        return self._cursor

    def _check_cursor(self, index: int) -> Any:
        pooled = self._live_pooled()
        cursors: list[Any] = pooled.info.setdefault(_CHECK_CURSORS, [])
        while len(cursors) <= index:
            cursors.append(pooled.dbapi_connection.cursor())  # type: ignore[union-attr]
        return cursors[index]

    def _write_cursor(self) -> Any:
        pooled = self._live_pooled()
        cursor = pooled.info.get(_WRITE_CURSOR)
        if cursor is None:
            cursor = pooled.info[_WRITE_CURSOR] = pooled.dbapi_connection.cursor()  # type: ignore[union-attr]
        return cursor

    # -- transaction ----------------------------------------------------------------------------
    @property
    def in_transaction(self) -> bool:
        if self._connection is not None:
            return self._connection.in_transaction()
        return self._begun

    def commit(self) -> None:
        if any(check is not None for _, _, _, check in self._queued):
            # Checked first: a COMMIT sent with them would commit before their check.
            self._send_queued(lambda: None, "(checking before COMMIT)")
        if self._failed_check is not None:
            # The transaction stays open: the caller rolls back, as after any failed commit.
            raise self._failed_check[1]()
        if self._connection is not None:
            self._connection.commit()
            self._begun = False
            return
        if not self._begun:
            return
        # Whatever COMMIT answers, the transaction is over for us (as for Connection.commit):
        # after a failure the caller rolls back, and the pool's reset-on-return rolls back too.
        self._begun = False
        self._savepoints = 0
        if self._queued:
            # The deferred writes and the COMMIT in one round trip.
            pooled = self._live_pooled()
            self._send_queued(lambda: self._dialect.do_commit(pooled), "COMMIT")
        else:
            try:
                self._dialect.do_commit(self._live_pooled())
            except self._dbapi_error as exc:
                self._fail(exc, "COMMIT", None, None)
        self._ended = True

    def rollback(self) -> None:
        self._failed_check = None
        if self._connection is not None:
            self._connection.rollback()
            self._begun = False
            return
        self._begun = False
        self._savepoints = 0
        # Deferred writes not sent are simply dropped: nothing of them reached the server.
        self._queued = []
        # Also after a failed COMMIT, which may leave SQLite's transaction open; a driver
        # rollback outside a transaction costs nothing (sqlite3 and psycopg check first).
        # Nothing to roll back on a connection that was invalidated (dropped by the server).
        if self._pooled is not None:
            try:
                self._dialect.do_rollback(self._pooled)
            except self._dbapi_error as exc:
                self._fail(exc, "ROLLBACK", None, None)
            self._ended = True

    @contextmanager
    def savepoint(self, release: bool = True) -> Iterator[None]:
        """A savepoint around the block: released when it ends, rolled back to when it raises.

        On the DBAPI connection with the SQL SQLAlchemy's ``begin_nested`` emits, so a
        statement that may fail (a unique violation) leaves the transaction usable without
        building a ``Connection``.

        ``release=False`` saves the ``RELEASE`` round trip for batches that take one savepoint
        per item: releasing changes nothing before the commit (a released savepoint's writes
        belong to the enclosing transaction, as they do when it stays open), and ``COMMIT``
        ends them all (https://www.postgresql.org/docs/current/sql-savepoint.html,
        https://www.sqlite.org/lang_savepoint.html). Names are unique per transaction, so
        rolling back to one never stops at a later one of the same name."""
        if self._connection is not None:
            with self._connection.begin_nested():
                yield
            return
        number = self._savepoints + 1
        name = f"sa_savepoint_{number}"
        mark = len(self._queued)
        self.defer(f"SAVEPOINT {name}", ())
        self._savepoints += 1
        try:
            yield
        except BaseException:
            if mark < len(self._queued) and self._queued[mark][0] == f"SAVEPOINT {name}":
                # Nothing since the SAVEPOINT reached the server: forgetting is rolling back.
                del self._queued[mark:]
            elif self._pooled is not None and self._begun:
                self.run(f"ROLLBACK TO SAVEPOINT {name}", ())
            if self._failed_check is not None and self._failed_check[2] >= number:
                # The write that missed was made after this savepoint: it is undone.
                self._failed_check = None
            raise
        if release:
            self.defer(f"RELEASE SAVEPOINT {name}", ())

    # -- SQLAlchemy Connection, on demand -------------------------------------------------------
    @property
    def connection(self) -> Connection:
        """A ``Connection`` on the same DBAPI connection and transaction, for Core statements."""
        if self._connection is None:
            if self._queued:
                # Core takes over the transaction: it must see every write made so far.
                self._send_queued(lambda: None, "(handing the transaction to Core)")
            if self._fresh:
                # Nothing ran yet: prove the connection alive (replacing it if the server dropped
                # it) before Core, which has no retry, takes over. Off the hot path.
                self._ping()
            # No engine events: ``engine_connect`` would ping again (see persistence/db.py).
            connection = sqlalchemy_internals.connection_without_events(
                self._engine, self._live_pooled()
            )
            if self._begun:
                # Tells Connection a transaction is open; the dialect's do_begin does not begin
                # a second one (persistence/db.py ``_begin_immediate``, psycopg: nothing to do).
                connection.begin()
            self._connection = connection
        return self._connection

    def close(self) -> None:
        """Check the connection in; the pool rolls back whatever is still open."""
        self._queued = []
        connection, self._connection = self._connection, None
        pooled, self._pooled = self._pooled, None
        if connection is not None:
            # The Connection checks the DBAPI connection in (or not, if it was invalidated).
            connection.close()
        elif pooled is not None and not (
            # After a commit or rollback here, skip the pool's reset-on-return rollback, as
            # Connection.close() does in that case.
            self._ended and sqlalchemy_internals.check_in_after_reset(pooled)
        ):
            pooled.close()

    # -- internals ------------------------------------------------------------------------------
    def _check_out(self) -> None:
        try:
            pooled = self._engine.raw_connection()
        except self._dbapi_error as exc:
            # As Connection does when it cannot connect.
            disconnect = self._dialect.is_disconnect(exc, None, None)
            raise sqlalchemy_error(exc, None, None, self._dialect, disconnect) from exc
        self._pooled = pooled
        self._begun = False
        self._fresh = True
        self._ended = True
        cursor = pooled.info.get(_CURSOR)
        if cursor is None:
            cursor = pooled.info[_CURSOR] = pooled.dbapi_connection.cursor()  # type: ignore[union-attr]
        self._cursor = cursor

    def _live_pooled(self) -> PoolProxiedConnection:
        if self._pooled is None:
            raise sa.exc.ResourceClosedError("the connection was invalidated (lost)")
        return self._pooled

    def _begin(self) -> Any:
        if self._connection is not None:
            if not self._connection.in_transaction():
                self._connection.begin()
            self._begun = True
            return self._cursor
        pooled = self._live_pooled()
        self._ended = False
        try:
            self._dialect.do_begin(pooled)
        except self._dbapi_error as exc:
            # Not begun: the next statement tries again (SQLite's BEGIN IMMEDIATE timed out).
            self._fail(exc, "BEGIN", None, None)
        self._begun = True
        return self._cursor

    def _retry(self, exc: Any, cursor: Any, sql: str, parameters: Any, many: bool) -> Any:
        if not self._reconnected_after(exc, cursor):
            self._fail(exc, sql, parameters, cursor)
        cursor = self._cursor
        try:
            send(cursor, sql, parameters, many)
        except self._dbapi_error as again:
            self._fail(again, sql, parameters, cursor)
        return cursor

    def _reconnected_after(self, exc: Any, cursor: Any) -> bool:
        """After a disconnect on a checkout's first statement: a fresh connection, begun."""
        if not self._fresh or self._connection is not None:
            return False
        if not self._dialect.is_disconnect(exc, self._live_pooled().dbapi_connection, cursor):
            return False
        self._invalidate(exc)
        self._check_out()
        self._begin()
        return True

    def _ping(self) -> None:
        pooled = self._live_pooled()
        try:
            self._dialect.do_ping(pooled.dbapi_connection)  # type: ignore[arg-type]
        except self._dbapi_error as exc:
            if not self._dialect.is_disconnect(exc, pooled.dbapi_connection, None):
                self._fail(exc, "ping", None, None)
            self._invalidate(exc)
            self._check_out()

    def _invalidate(self, exc: Exception) -> None:
        pooled, self._pooled = self._pooled, None
        self._begun = False
        self._queued = []
        self._failed_check = None
        if pooled is None:
            return
        # As Connection does on a disconnect: this connection is closed, and every pooled one
        # opened before now is replaced at its next checkout (the server dropped them too).
        sqlalchemy_internals.invalidate_pool(self._engine, pooled, exc)

    def _fail(self, exc: Any, sql: str, parameters: Any, cursor: Any) -> NoReturn:
        # Something reached the server: a disconnect from now on is not retried.
        self._fresh = False
        pooled = self._pooled
        disconnect = pooled is not None and self._dialect.is_disconnect(
            exc, pooled.dbapi_connection, cursor
        )
        if disconnect:
            self._invalidate(exc)
        raise sqlalchemy_error(exc, sql, parameters, self._dialect, disconnect) from exc


def send(cursor: Any, sql: str, parameters: Any, many: bool) -> None:
    """Run ``sql`` on ``cursor``: once, or once per parameter set when ``many``."""
    if many:
        cursor.executemany(sql, parameters)
    else:
        cursor.execute(sql, parameters)


def sqlalchemy_error(
    exc: Any, sql: str | None, parameters: Any, dialect: Dialect, disconnect: bool
) -> sa.exc.DBAPIError:
    """The exception Core execution raises for ``exc`` (IntegrityError and so on)."""
    error: sa.exc.DBAPIError = sa.exc.DBAPIError.instance(
        sql,
        parameters,
        exc,
        dialect.loaded_dbapi.Error,
        connection_invalidated=disconnect,
        dialect=dialect,
    )
    return error
