"""Core statements compiled once per dialect and run straight on a DBAPI cursor: ``Prepared``.

The SQL and the values are exactly what ``Connection.execute`` would send and return (values
converted by precomputed functions); only its per-call machinery is skipped. A statement runs on
a unit of work's ``checkout.Checkout``, or on a SQLAlchemy ``Connection``.
"""

from __future__ import annotations

import json
import operator
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Dialect
from sqlalchemy.sql import ClauseElement
from sqlalchemy.sql.compiler import SQLCompiler

from persistence import sqlalchemy_internals
from persistence.checkout import Checkout, send, sqlalchemy_error
from persistence.types import UTCDateTime, json_value

Processor = Callable[[Any], Any] | None
Params = Mapping[str, Any]


class Prepared:
    """One statement for one dialect. Bind parameters are given by name, as with Core.

    The methods take the ``Checkout`` of a unit of work, or a SQLAlchemy ``Connection`` (then
    its transaction is used, and a cursor per statement).
    """

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
        # Values fixed in the statement itself (``limit(1)`` renders a parameter, for instance).
        self._fixed = {
            name: binds[name].value
            for name in names
            if binds[name].value is not None and not binds[name].required
        }
        self._values = _getter(names)
        self._bind = _conversions(bind_converter(binds[name].type, dialect) for name in names)
        self._convert = _conversions(result_converter(column.type, dialect) for column in returns)
        self.keys = tuple(column.key for column in returns)

    # -- running ------------------------------------------------------------------------------
    def rows(self, on: Checkout | Connection, params: Params) -> list[list[Any]]:
        fetched = self._fetch(on, self._parameters(params))
        convert = self._convert
        result = []
        for row in fetched:
            values = list(row)
            for i, function in convert:
                values[i] = function(values[i])
            result.append(values)
        return result

    def first(self, on: Checkout | Connection, params: Params) -> list[Any] | None:
        fetched = self._fetch(on, self._parameters(params))
        if not fetched:
            return None
        values = list(fetched[0])
        for i, function in self._convert:
            values[i] = function(values[i])
        return values

    def execute(self, on: Checkout | Connection, params: Params) -> int:
        """Run a statement that returns no rows; returns the DBAPI rowcount."""
        parameters = self._parameters(params)
        if isinstance(on, Checkout):
            return int(on.run(self.sql, parameters).rowcount)
        with _borrowed(on, self) as checkout:
            return int(checkout.run(self.sql, parameters).rowcount)

    def execute_many(self, on: Checkout | Connection, many: Sequence[Params]) -> None:
        if len(many) == 1:
            self.execute(on, many[0])
            return
        parameters = [self._parameters(p) for p in many]
        if isinstance(on, Checkout):
            on.run(self.sql, parameters, many=True)
            return
        with _borrowed(on, self) as checkout:
            checkout.run(self.sql, parameters, many=True)

    def defer_many(self, on: Checkout | Connection, many: Sequence[Params]) -> None:
        """``execute_many`` of a write whose result nobody reads: on a ``Checkout`` it may go
        out with the next statement (``Checkout.defer``); its errors surface there."""
        if not isinstance(on, Checkout) or not many:
            self.execute_many(on, many)
            return
        if len(many) == 1:
            on.defer(self.sql, self._parameters(many[0]))
            return
        on.defer(self.sql, [self._parameters(p) for p in many], many=True)

    def defer_checked(
        self, on: Checkout | Connection, params: Params, rows: int, miss: Callable[[], Exception]
    ) -> None:
        """``Checkout.defer_checked``: a write that must change ``rows`` rows, else ``miss()``
        is raised (on a ``Connection``, at once)."""
        if isinstance(on, Checkout):
            on.defer_checked(self.sql, self._parameters(params), rows, miss)
        elif self.execute(on, params) != rows:
            raise miss()

    def insert(self, on: Checkout | Connection, params: Params) -> int:
        """Run an INSERT and return the new row's id (RETURNING it where the dialect can)."""
        parameters = self._parameters(params)
        if isinstance(on, Checkout):
            return self._new_id(on.run(self.sql, parameters))
        with _borrowed(on, self) as checkout:
            return self._new_id(checkout.run(self.sql, parameters))

    # -- internals ----------------------------------------------------------------------------
    def _new_id(self, cursor: Any) -> int:
        if self.keys:
            # fetchall, not fetchone: a reused SQLite cursor must not keep the statement open.
            rows = cursor.fetchall()
            if not rows:
                raise RuntimeError(f"no id returned by {self.sql}")
            return int(rows[0][0])
        return int(cursor.lastrowid)

    def _fetch(self, on: Checkout | Connection, parameters: Any) -> list[Any]:
        if isinstance(on, Checkout):
            fetched: list[Any] = on.run(self.sql, parameters).fetchall()
            return fetched
        with _borrowed(on, self) as checkout:
            fetched = checkout.run(self.sql, parameters).fetchall()
            return fetched

    def _parameters(self, params: Params) -> Any:
        if self._fixed:
            params = {**self._fixed, **params}
        values: Any = self._values(params)
        if self._bind:
            values = list(values)
            for i, function in self._bind:
                values[i] = function(values[i])
        if self._positional:
            return values
        return dict(zip(self._dbapi_names, values, strict=True))


class _Borrowed:
    """What ``Prepared`` needs of a ``Checkout``, on a caller's ``Connection``."""

    def __init__(self, connection: Connection, prepared: Prepared) -> None:
        self._connection = connection
        self._prepared = prepared
        self._cursor: Any = None

    def run(self, sql: str, parameters: Any, many: bool = False) -> Any:
        connection = self._connection
        # Only inside a transaction SQLAlchemy began: on SQLite that is what emits BEGIN
        # IMMEDIATE, and without it each statement would commit on its own.
        if not connection.in_transaction():
            connection.begin()
        dbapi_connection = connection.connection.dbapi_connection
        assert dbapi_connection is not None
        dialect = connection.dialect
        cursor = self._cursor = dbapi_connection.cursor()
        try:
            send(cursor, sql, parameters, many)
        except self._prepared._dbapi_error as exc:
            disconnect = dialect.is_disconnect(exc, dbapi_connection, cursor)
            if disconnect:
                connection.invalidate(exc)
            raise sqlalchemy_error(exc, sql, parameters, dialect, disconnect) from exc
        return cursor


@contextmanager
def _borrowed(connection: Connection, prepared: Prepared) -> Iterator[_Borrowed]:
    borrowed = _Borrowed(connection, prepared)
    try:
        yield borrowed
    finally:
        if borrowed._cursor is not None:
            borrowed._cursor.close()


def insert_returning_id(table: sa.Table, dialect: Dialect, column_keys: Sequence[str]) -> Prepared:
    """An INSERT into ``table`` whose ``Prepared.insert`` answers the new id."""
    statement: Any = sa.insert(table)
    returns: tuple[sa.ColumnElement[Any], ...] = ()
    # SQLite's cursor.lastrowid is exact and cheaper than RETURNING; PostgreSQL has no lastrowid.
    if not getattr(dialect, "postfetch_lastrowid", False) and dialect.insert_returning:
        statement = statement.returning(table.c.id)
        returns = (table.c.id,)
    return Prepared(statement, dialect, column_keys=column_keys, returns=returns)


def bind_converter(type_: sa.types.TypeEngine[Any], dialect: Dialect) -> Processor:
    """What SQLAlchemy does to a value bound to ``type_`` on ``dialect``, as one function
    (None: nothing)."""
    implementation = type_.dialect_impl(dialect)
    if isinstance(implementation, UTCDateTime):
        direct = implementation.direct_bind_converter(dialect)
        if direct is not None:
            return direct
    processor = implementation.bind_processor(dialect)
    if processor is not None and _json_as_text(implementation, dialect):
        return _json_bind(sqlalchemy_internals.json_serializer(dialect) or json.dumps, processor)
    return processor


def result_converter(type_: sa.types.TypeEngine[Any], dialect: Dialect) -> Processor:
    """What SQLAlchemy does to a value of ``type_`` read on ``dialect`` (None: nothing)."""
    implementation = type_.dialect_impl(dialect)
    if isinstance(implementation, UTCDateTime):
        direct = implementation.direct_result_converter(dialect)
        if direct is not None:
            return direct
    # The DBAPI type code only matters to a few dialects' numeric types, none used here.
    processor = implementation.result_processor(dialect, None)
    if processor is not None and _json_as_text(implementation, dialect):
        loads = sqlalchemy_internals.json_deserializer(dialect)
        return _json_result(json_value if loads in (None, json.loads) else loads, processor)
    return processor


def _json_as_text(implementation: sa.types.TypeEngine[Any], dialect: Dialect) -> bool:
    """A JSON column the dialect keeps as text (SQLite): SQLAlchemy's processors only call the
    engine's serializer and deserializer, inside two or three wrappers."""
    if not isinstance(implementation, sa.JSON) or dialect.name != "sqlite":
        return False
    text = implementation._str_impl  # what SQLAlchemy's JSON processors wrap
    return text.bind_processor(dialect) is None and text.result_processor(dialect, None) is None


def _json_bind(
    dumps: Callable[[Any], str], processor: Callable[[Any], Any]
) -> Callable[[Any], Any]:
    def bind(value: Any) -> Any:
        # Documents are dicts and lists; None and SQL NULL markers take SQLAlchemy's way.
        if type(value) is dict or type(value) is list:
            return dumps(value)
        return processor(value)

    return bind


def _json_result(
    loads: Callable[[str], Any], processor: Callable[[Any], Any]
) -> Callable[[Any], Any]:
    def result(value: Any) -> Any:
        if type(value) is str:
            return loads(value)
        # NULL, and numbers SQLite's JSON functions may have stored.
        return processor(value)

    return result


def _conversions(
    converters: Iterator[Processor] | Sequence[Processor],
) -> tuple[tuple[int, Callable[[Any], Any]], ...]:
    return tuple((i, f) for i, f in enumerate(converters) if f is not None)


def _getter(names: Sequence[str]) -> Callable[[Params], Sequence[Any]]:
    """The values of ``names`` in a parameter dict, in order, in one C call."""
    if not names:
        return lambda _params: ()
    if len(names) == 1:
        name = names[0]
        return lambda params: (params[name],)
    return operator.itemgetter(*names)
