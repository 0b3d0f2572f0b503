"""What every SQL store shares: the transaction it runs on, and lost races as ``Conflict``."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol, TypeVar

from sqlalchemy.exc import DBAPIError

from persistence.checkout import Checkout
from persistence.fastsql import Prepared
from persistence.sql_errors import deferred_unique_violation, reason_of, retryable
from persistence.statements import Statements
from workflow.errors import Conflict

P = TypeVar("P")
R = TypeVar("R")


class Transaction(Protocol):
    """The unit of work as its stores see it: one checkout and the compiled statements."""

    @property
    def statements(self) -> Statements: ...

    @property
    def dialect_name(self) -> str: ...

    #: An event was recorded or a timer marked fired: see ``workflow.ports.UnitOfWork``.
    once_by_record: bool

    def active(self) -> Checkout: ...


class SqlStore:
    def __init__(self, uow: Transaction) -> None:
        self._uow = uow

    def _run(self, run: Callable[[Checkout, P], R], params: P) -> R:
        """``run`` is a bound ``Prepared`` method; lost races come out as ``Conflict``."""
        try:
            return run(self._uow.active(), params)
        except DBAPIError as exc:
            if retryable(exc):
                raise Conflict(f"a concurrent writer is in the way: {reason_of(exc)}") from exc
            if deferred_unique_violation(exc):
                # A deferred write (a log row, ...) lost a race and surfaced here, later than
                # at its own call, which would have said Conflict too.
                raise Conflict(f"a concurrent writer won: {reason_of(exc)}") from exc
            raise

    def _run_checked(
        self, statement: Prepared, params: dict[str, Any], miss: Callable[[], Exception]
    ) -> None:
        """A checked deferred write of one row (``Prepared.defer_checked``)."""

        def write(checkout: Checkout, values: dict[str, Any]) -> None:
            statement.defer_checked(checkout, values, 1, miss)

        self._run(write, params)
