"""What a database error means to the stores: a lost race, a unique violation, its reason."""

from __future__ import annotations

from sqlalchemy.exc import DBAPIError, IntegrityError

# PostgreSQL SQLSTATEs that mean "a concurrent transaction got in the way; retry".
_PG_RETRYABLE = frozenset({"40001", "40P01", "55P03"})
_PG_UNIQUE_VIOLATION = "23505"
_SQLITE_UNIQUE = frozenset({"SQLITE_CONSTRAINT_UNIQUE", "SQLITE_CONSTRAINT_PRIMARYKEY"})


def retryable(exc: DBAPIError) -> bool:
    """Lost a race (serialization failure, deadlock, lock timeout), not a bug."""
    if getattr(exc.orig, "sqlstate", None) in _PG_RETRYABLE:
        return True
    name = getattr(exc.orig, "sqlite_errorname", "") or ""
    return name.startswith(("SQLITE_BUSY", "SQLITE_LOCKED"))


def deferred_unique_violation(exc: DBAPIError) -> bool:
    deferred = getattr(exc, "deferred_write", False)
    return deferred and isinstance(exc, IntegrityError) and unique_violation(exc)


def unique_violation(exc: IntegrityError) -> bool:
    if getattr(exc.orig, "sqlstate", None) == _PG_UNIQUE_VIOLATION:
        return True
    return getattr(exc.orig, "sqlite_errorname", None) in _SQLITE_UNIQUE


def reason_of(exc: DBAPIError) -> str:
    return str(exc.orig).strip().splitlines()[0] if exc.orig is not None else str(exc)
