"""Column types shared by the tables: UTC timestamps, JSON documents and portable ids."""

from __future__ import annotations

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
        if not isinstance(value, datetime):
            raise TypeError(f"expected a datetime, got {type(value).__name__}")
        if value.tzinfo is None or value.utcoffset() is None:
            # A naive time would be silently read as UTC; refusing it catches the bug at its source.
            raise ValueError(f"naive datetime {value.isoformat()} refused: give it a timezone")
        utc = value.astimezone(UTC)
        return utc if dialect.name == "postgresql" else utc.replace(tzinfo=None)

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        # PostgreSQL answers in the session's TimeZone, which is not necessarily UTC.
        return value.astimezone(UTC)


#: JSON everywhere; on PostgreSQL the binary form, which can be indexed and compared.
JSONDocument: sa.types.TypeEngine[Any] = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")

#: 64-bit surrogate keys. On SQLite only a column declared exactly ``INTEGER PRIMARY KEY`` is the
#: auto-assigned rowid (already 64-bit there), so the variant keeps ids generated on both backends.
BigId: sa.types.TypeEngine[int] = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
