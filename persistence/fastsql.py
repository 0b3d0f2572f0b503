"""Core statements compiled once per dialect and run straight on the DBAPI cursor.

SQLAlchemy's execution layer (execution context, events, result objects) costs several times
what SQLite spends on a one-row statement, and one transition runs about ten of them. Here the
same Core statements are compiled by SQLAlchemy and values go through SQLAlchemy's own bind and
result processors, so the SQL and the conversions are exactly what ``Connection.execute`` would
produce; only the per-call machinery is skipped. The transaction stays with the SQLAlchemy
``Connection``: statements begin it if needed, and commit and rollback go through it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Dialect
from sqlalchemy.sql import ClauseElement
from sqlalchemy.sql.compiler import SQLCompiler

Processor = Callable[[Any], Any] | None
Params = Mapping[str, Any]


class Prepared:
    """One statement for one dialect. Bind parameters are given by name, as with Core."""

    def __init__(
        self,
        statement: ClauseElement,
        dialect: Dialect,
        *,
        column_keys: Sequence[str] | None = None,
        returns: Sequence[sa.ColumnElement[Any]] = (),
    ) -> None:
        compiled = statement.compile(
            dialect=dialect, column_keys=list(column_keys) if column_keys is not None else None
        )
        if not isinstance(compiled, SQLCompiler):
            raise TypeError(f"not a SQL statement: {statement!r}")
        if compiled.post_compile_params or compiled.literal_execute_params:
            # Those are rendered per execution (IN lists), which is what this class skips.
            raise TypeError(f"parameters rendered at execution time in {compiled.string}")
        binds = compiled.binds
        self.sql = compiled.string
        self._dialect = dialect
        self._dbapi_error: Any = dialect.loaded_dbapi.Error
        self._positional = compiled.positional
        names = list(compiled.positiontup or ()) if compiled.positional else list(binds)
        # Named paramstyles may spell a name differently in the SQL text (special characters).
        escaped: Mapping[str, str] = compiled.escaped_bind_names or {}
        self._dbapi_names = tuple(escaped.get(name, name) for name in names)
        bind_processors = [_bind_processor(binds[name].type, dialect) for name in names]
        # Values fixed in the statement itself (``limit(1)`` renders a parameter, for instance).
        self._fixed = {
            name: binds[name].value
            for name in names
            if binds[name].value is not None and not binds[name].required
        }
        self._plan = tuple(zip(names, bind_processors, strict=True))
        processors = [_result_processor(column.type, dialect) for column in returns]
        self._convert = tuple((i, p) for i, p in enumerate(processors) if p is not None)
        self.keys = tuple(column.key for column in returns)

    # -- running ------------------------------------------------------------------------------
    def rows(self, connection: Connection, params: Params) -> list[list[Any]]:
        cursor = self._run(connection, self._parameters(params))
        try:
            fetched = cursor.fetchall()
        finally:
            cursor.close()
        result = []
        for row in fetched:
            values = list(row)
            for i, convert in self._convert:
                values[i] = convert(values[i])
            result.append(values)
        return result

    def first(self, connection: Connection, params: Params) -> list[Any] | None:
        found = self.rows(connection, params)
        return found[0] if found else None

    def execute(self, connection: Connection, params: Params) -> int:
        """Run a statement that returns no rows; returns the DBAPI rowcount."""
        cursor = self._run(connection, self._parameters(params))
        try:
            return int(cursor.rowcount)
        finally:
            cursor.close()

    def execute_many(self, connection: Connection, many: Sequence[Params]) -> None:
        if len(many) == 1:
            self.execute(connection, many[0])
            return
        cursor = self._run(connection, [self._parameters(p) for p in many], many=True)
        cursor.close()

    def insert(self, connection: Connection, params: Params) -> int:
        """Run an INSERT and return the new row's id (RETURNING it where the dialect can)."""
        cursor = self._run(connection, self._parameters(params))
        try:
            if self.keys:
                row = cursor.fetchone()
                if row is None:
                    raise RuntimeError(f"no id returned by {self.sql}")
                return int(row[0])
            return int(cursor.lastrowid)
        finally:
            cursor.close()

    # -- internals ----------------------------------------------------------------------------
    def _parameters(self, params: Params) -> Any:
        if self._fixed:
            params = {**self._fixed, **params}
        values = [params[name] if bind is None else bind(params[name]) for name, bind in self._plan]
        if self._positional:
            return values
        return dict(zip(self._dbapi_names, values, strict=True))

    def _run(self, connection: Connection, parameters: Any, many: bool = False) -> Any:
        # Only inside a transaction SQLAlchemy began: on SQLite that is what emits BEGIN
        # IMMEDIATE, and without it each statement would commit on its own.
        if not connection.in_transaction():
            connection.begin()
        dbapi_connection = connection.connection.dbapi_connection
        assert dbapi_connection is not None
        cursor = dbapi_connection.cursor()
        try:
            if many:
                cursor.executemany(self.sql, parameters)
            else:
                cursor.execute(self.sql, parameters)
        except self._dbapi_error as exc:
            cursor.close()
            if self._dialect.is_disconnect(exc, dbapi_connection, cursor):
                connection.invalidate(exc)
            # The same exception classes Core execution raises (IntegrityError and so on).
            raise sa.exc.DBAPIError.instance(
                self.sql, parameters, exc, self._dbapi_error, dialect=self._dialect
            ) from exc
        except BaseException:
            cursor.close()
            raise
        return cursor


def insert_returning_id(table: sa.Table, dialect: Dialect, column_keys: Sequence[str]) -> Prepared:
    """An INSERT into ``table`` whose ``Prepared.insert`` answers the new id."""
    statement: Any = sa.insert(table)
    returns: tuple[sa.ColumnElement[Any], ...] = ()
    # SQLite's cursor.lastrowid is exact and cheaper than RETURNING; PostgreSQL has no lastrowid.
    if not getattr(dialect, "postfetch_lastrowid", False) and dialect.insert_returning:
        statement = statement.returning(table.c.id)
        returns = (table.c.id,)
    return Prepared(statement, dialect, column_keys=column_keys, returns=returns)


def _bind_processor(type_: sa.types.TypeEngine[Any], dialect: Dialect) -> Processor:
    return type_.dialect_impl(dialect).bind_processor(dialect)


def _result_processor(type_: sa.types.TypeEngine[Any], dialect: Dialect) -> Processor:
    # The DBAPI type code only matters to a few dialects' numeric types, none used here.
    return type_.dialect_impl(dialect).result_processor(dialect, None)
