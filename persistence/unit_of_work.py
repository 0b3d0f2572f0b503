"""The SQL unit of work: ``workflow.ports.UnitOfWork`` on one connection and one transaction.

The stores run SQLAlchemy Core statements, not ORM sessions: a transition is about ten single-row
statements, and the ORM's identity map and change tracking would cost more than they do. The
fixed statements go through ``fastsql.Prepared`` (compiled once per dialect, run on the DBAPI
cursor); the few built per call through ``Connection``.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from types import TracebackType
from typing import Self

from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import DBAPIError, IntegrityError

from persistence.checkout import Checkout
from persistence.sql_errors import reason_of, retryable
from persistence.statements import Statements, statements_for
from persistence.stores.cases import SqlCaseRepository
from persistence.stores.events import SqlEventStore
from persistence.stores.orders import SqlOrderStore
from persistence.stores.outbox import SqlOutbox
from persistence.stores.timers import SqlTimerStore
from persistence.stores.transition_log import SqlTransitionLog
from workflow.errors import Conflict
from workflow.ports import (
    CaseRepository,
    EventStore,
    OrderStore,
    Outbox,
    TimerStore,
    TransitionLog,
)


class SqlUnitOfWork:
    """One ``with`` block is one connection and one transaction; leaving it uncommitted rolls
    back. After a ``Conflict`` or a database error the transaction may be unusable (PostgreSQL
    aborts it): roll back, or leave the block, before doing more.

    The stores run on a ``checkout.Checkout`` (a pooled DBAPI connection); ``connection`` gives a
    SQLAlchemy ``Connection`` on the same transaction when Core is wanted.
    """

    def __init__(self, engine: Engine) -> None:
        self._engine = engine
        self._checkout: Checkout | None = None
        self._statements: Statements | None = None
        #: An event was recorded or a timer marked fired: see ``workflow.ports.UnitOfWork``.
        self.once_by_record = False
        self._log = SqlTransitionLog(self)
        self._timers = SqlTimerStore(self)
        self._cases = SqlCaseRepository(self, self._timers)
        self._events = SqlEventStore(self, self._cases)
        # Typed as the ports: protocol attributes are mutable, so mypy matches them invariantly.
        self.cases: CaseRepository = self._cases
        self.orders: OrderStore = SqlOrderStore(self)
        self.log: TransitionLog = self._log
        self.timers: TimerStore = self._timers
        self.outbox: Outbox = SqlOutbox(self)
        self.events: EventStore = self._events

    @property
    def connection(self) -> Connection:
        return self.active().connection

    @property
    def statements(self) -> Statements:
        if self._statements is None:
            raise RuntimeError("the unit of work is used outside its `with` block")
        return self._statements

    @property
    def dialect_name(self) -> str:
        return self._engine.dialect.name

    def __enter__(self) -> Self:
        if self._checkout is not None:
            raise RuntimeError("the unit of work is already in use")
        # The transaction begins with the first statement (on SQLite: takes the write lock).
        self._checkout = Checkout(self._engine)
        # Compiled after the first connect, which tells the dialect what the server supports.
        self._statements = statements_for(self._engine.dialect)
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        checkout, self._checkout = self._checkout, None
        if checkout is None:
            return
        try:
            if checkout.in_transaction:
                checkout.rollback()
        finally:
            self._forget()
            checkout.close()

    def commit(self) -> None:
        checkout = self.active()
        try:
            checkout.commit()
        except Conflict:
            # A checked write missed (``Checkout.defer_checked``): nothing was committed.
            self._after_failed_commit()
            raise
        except IntegrityError as exc:
            self._after_failed_commit()
            raise Conflict(f"a concurrent writer won: {reason_of(exc)}") from exc
        except DBAPIError as exc:
            if not retryable(exc):
                raise
            self._after_failed_commit()
            raise Conflict(f"a concurrent writer won: {reason_of(exc)}") from exc
        # What the stores knew of the transaction that ended (the case copies they hold stay).
        self.once_by_record = False
        self._events.forget_read()
        self._cases.forget_read()

    def rollback(self) -> None:
        self.active().rollback()
        self._forget()

    def active(self) -> Checkout:
        if self._checkout is None:
            raise RuntimeError("the unit of work is used outside its `with` block")
        return self._checkout

    def _forget(self) -> None:
        self._log.forget_keys()
        self._cases.forget_loaded()
        self._timers.forget_read()
        self._events.forget_read()
        self.once_by_record = False

    @contextmanager
    def savepoint(self) -> Iterator[None]:
        """A savepoint per item of a batch: rolled back to, then the error re-raised, when the
        block fails; never released (``Checkout.savepoint(release=False)``: one round trip)."""
        checkout = self.active()
        keys = self._log.registered_keys()
        try:
            with checkout.savepoint(release=False):
                yield
        except BaseException:
            # The idempotency keys the block registered are gone with its rows, and the timers
            # read with cases may have been read after its writes.
            self._log.restore_keys(keys)
            self._timers.forget_read()
            self._cases.forget_read()
            raise

    def _after_failed_commit(self) -> None:
        self._forget()
        self.active().rollback()


class SqlUnitOfWorkFactory:
    """What the service layer is given: each call is a fresh unit of work on ``engine``."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def __call__(self) -> SqlUnitOfWork:
        return SqlUnitOfWork(self.engine)
