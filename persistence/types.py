"""Column types shared by the tables: UTC timestamps, JSON documents and portable ids."""

from __future__ import annotations

import json
import json.scanner
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql
from sqlalchemy.engine import Dialect


class UTCDateTime(sa.TypeDecorator[datetime]):
    """An instant: only aware datetimes go in, aware UTC datetimes come out.

    PostgreSQL keeps it as ``timestamptz``. SQLite has no time type, so the value is stored as
    naive UTC text in SQLAlchemy's fixed-width ``YYYY-MM-DD HH:MM:SS.ffffff`` form: with a single
    zone and a fixed width, comparing the strings in SQL compares the instants.
    """

    impl = sa.DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        utc = _aware_utc(value)
        return utc if dialect.name == "postgresql" else utc.replace(tzinfo=None)

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        return None if value is None else _as_utc(value)

    def direct_bind_converter(self, dialect: Dialect) -> Callable[[Any], Any] | None:
        """What this type and the dialect's DATETIME do to a bound value, as one function.

        ``fastsql`` calls it instead of the two processors SQLAlchemy chains (this decorator's,
        then the dialect type's): same value out, a few µs less per timestamp. None for a
        dialect this does not know (then SQLAlchemy's processors run)."""
        if dialect.name == "sqlite":
            return _bind_sqlite_text
        if dialect.name == "postgresql":
            # psycopg adapts the aware datetime itself: SQLAlchemy's DateTime has no bind
            # processor there.
            return _bind_aware_utc
        return None

    def direct_result_converter(self, dialect: Dialect) -> Callable[[Any], Any] | None:
        """The result-side counterpart of ``direct_bind_converter``."""
        if dialect.name == "sqlite":
            return _result_sqlite_text
        if dialect.name == "postgresql":
            return _result_aware
        return None


def _aware_utc(value: datetime) -> datetime:
    if not isinstance(value, datetime):
        raise TypeError(f"expected a datetime, got {type(value).__name__}")
    if value.tzinfo is None or value.utcoffset() is None:
        # A naive time would be silently read as UTC; refusing it catches the bug at its source.
        raise ValueError(f"naive datetime {value.isoformat()} refused: give it a timezone")
    return value.astimezone(UTC)


def _as_utc(value: datetime) -> datetime:
    if value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    # PostgreSQL answers in the session's TimeZone, which is not necessarily UTC.
    return value.astimezone(UTC)


#: SQLAlchemy's SQLite DATETIME storage format (``sqlalchemy/dialects/sqlite/base.py``,
#: ``DATETIME._storage_format``, filled from the same fields), which every stored timestamp was
#: written in: naive UTC, always with microseconds.
_SQLITE_STORAGE_FORMAT = "%04d-%02d-%02d %02d:%02d:%02d.%06d"
_SQLITE_STORAGE_WIDTH = 26

#: The last instant bound on SQLite and its text. A transition stamps its case, log row, timer
#: and outbox rows with one clock reading, so the same object comes several times in a row.
#: Holding it keeps its identity from being reused; datetimes are immutable.
_last_bound: tuple[datetime | None, str] = (None, "")


def _bind_sqlite_text(value: datetime | None) -> str | None:
    global _last_bound
    if value is None:
        return None
    last = _last_bound
    if last[0] is value:
        return last[1]
    # Already UTC (what the clock gives) needs no conversion, only the checks' outcome.
    utc = value if type(value) is datetime and value.tzinfo is UTC else _aware_utc(value)
    text = _SQLITE_STORAGE_FORMAT % (
        utc.year,
        utc.month,
        utc.day,
        utc.hour,
        utc.minute,
        utc.second,
        utc.microsecond,
    )
    _last_bound = (value, text)
    return text


def _bind_aware_utc(value: datetime | None) -> datetime | None:
    if value is None or (type(value) is datetime and value.tzinfo is UTC):
        return value
    return _aware_utc(value)


def _result_sqlite_text(value: str | None) -> datetime | None:
    if value is None:
        return None
    if len(value) == _SQLITE_STORAGE_WIDTH and value[19] == ".":
        # The storage format, which has no room for an offset: parsing it as UTC directly
        # skips a replace().
        return datetime.fromisoformat(value + "+00:00")
    # SQLAlchemy 2's SQLite DATETIME parses with datetime.fromisoformat too.
    return _as_utc(datetime.fromisoformat(value))


def _result_aware(value: datetime | None) -> datetime | None:
    return None if value is None else _as_utc(value)


# -- JSON text ------------------------------------------------------------------------------
# json.dumps/json.loads go through three or four Python frames around the C encoder and scanner
# (JSONEncoder.encode, iterencode, JSONDecoder.decode, raw_decode), which costs more than the C
# work on the small documents stored here. These call the C parts as those frames do.

#: ``json.dumps(value, ensure_ascii=False)`` builds this same encoder on every call.
_JSON_ENCODER = json.JSONEncoder(ensure_ascii=False)
_c_make_encoder = getattr(json.encoder, "c_make_encoder", None)
#: What ``json.loads`` runs: the default decoder's scanner (``JSONDecoder.__init__``).
_scan_once = json.scanner.make_scanner(json.JSONDecoder())  # type: ignore[arg-type]  # typeshed


def json_text(value: Any) -> str:
    """``json.dumps(value, ensure_ascii=False)``: the same text (SQLite keeps Chinese readable;
    the default escapes it to \\uXXXX)."""
    if _c_make_encoder is None:
        return _JSON_ENCODER.encode(value)
    # JSONEncoder.iterencode(value, _one_shot=True) with the encoder's settings; a fresh
    # markers dict keeps the circular-reference check.
    encoder = _c_make_encoder(
        {},
        _JSON_ENCODER.default,
        json.encoder.encode_basestring,
        None,
        _JSON_ENCODER.key_separator,
        _JSON_ENCODER.item_separator,
        False,
        False,
        True,
    )
    return "".join(encoder(value, 0))


def json_value(text: str) -> Any:
    """``json.loads(text)``: the same value, and the same error for text it refuses."""
    try:
        value, end = _scan_once(text, 0)
    except StopIteration:
        return json.loads(text)
    if end != len(text):
        # Trailing whitespace or extra data: json.loads says which.
        return json.loads(text)
    return value


#: JSON everywhere; on PostgreSQL the binary form, which can be indexed and compared.
JSONDocument: sa.types.TypeEngine[Any] = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")

#: 64-bit surrogate keys. On SQLite only a column declared exactly ``INTEGER PRIMARY KEY`` is the
#: auto-assigned rowid (already 64-bit there), so the variant keeps ids generated on both backends.
BigId: sa.types.TypeEngine[int] = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
