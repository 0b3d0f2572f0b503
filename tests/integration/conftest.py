"""Fixtures for the storage tests: every test gets its own empty, migrated database.

Tests taking ``database_url`` run twice: on a SQLite file and on a throwaway PostgreSQL database
created from ``AFTERSALES_TEST_POSTGRES_URL`` (skipped when it is unset, unless
``AFTERSALES_REQUIRE_POSTGRES`` asks for a failure instead).
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from alembic import command
from sqlalchemy.engine import URL, Engine
from sqlalchemy.pool import NullPool

from entrypoints.samples import import_orders_for
from persistence.checkout import Checkout
from persistence.db import dispose_engine, make_engine, normalize_url
from persistence.migrate import alembic_config, upgrade
from persistence.tables import cases
from persistence.unit_of_work import SqlUnitOfWorkFactory
from workflow.model import Case, Item, Payment, Timer
from workflow.orders_service import OrderService
from workflow.service import CaseService, CaseView
from workflow.states import CaseState, CaseType

POSTGRES_ENV = "AFTERSALES_TEST_POSTGRES_URL"
REQUIRE_POSTGRES_ENV = "AFTERSALES_REQUIRE_POSTGRES"

T0 = datetime(2026, 11, 20, 2, 0, tzinfo=UTC)


def postgres_param() -> Any:
    marks: list[Any] = [pytest.mark.postgres]
    if not os.environ.get(POSTGRES_ENV) and not os.environ.get(REQUIRE_POSTGRES_ENV):
        marks.append(
            pytest.mark.skip(
                reason=f"PostgreSQL tests need {POSTGRES_ENV}, "
                "e.g. postgresql://postgres@127.0.0.1:5432/test"
            )
        )
    return pytest.param("postgres", id="postgres", marks=marks)


@pytest.fixture(params=[pytest.param("sqlite", id="sqlite"), postgres_param()])
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def empty_database_url(backend: str, tmp_path: Path) -> Iterator[str]:
    """A database nobody else uses, with no tables yet."""
    if backend == "sqlite":
        url = f"sqlite:///{tmp_path / 'db' / 'aftersales.db'}"
        yield url
        dispose_engine(url)
        return
    server_url = os.environ.get(POSTGRES_ENV)
    if not server_url:
        pytest.fail(f"{REQUIRE_POSTGRES_ENV} is set but {POSTGRES_ENV} is not")
    with _throwaway_postgres(normalize_url(server_url)) as url:
        yield url


@pytest.fixture
def database_url(empty_database_url: str) -> str:
    """A fresh database at the newest schema."""
    upgrade(empty_database_url)
    return empty_database_url


@pytest.fixture
def engine(database_url: str) -> Engine:
    return make_engine(database_url)


@pytest.fixture
def uow_factory(engine: Engine) -> SqlUnitOfWorkFactory:
    return SqlUnitOfWorkFactory(engine)


@contextmanager
def _throwaway_postgres(server_url: URL) -> Iterator[str]:
    """CREATE DATABASE, then DROP ... WITH (FORCE), which also ends connections left behind."""
    server = sa.create_engine(server_url, isolation_level="AUTOCOMMIT", poolclass=NullPool)
    name = f"aftersales_t_{secrets.token_hex(6)}"
    url = server_url.set(database=name).render_as_string(hide_password=False)
    with server.connect() as connection:
        connection.exec_driver_sql(f'CREATE DATABASE "{name}"')
    try:
        yield url
    finally:
        dispose_engine(url)
        with server.connect() as connection:
            connection.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        server.dispose()


@pytest.fixture
def new_case() -> Callable[..., Case]:
    """Builds an unsaved submitted case; keyword arguments override any field."""

    def build(order_id: str = "o-1", skus: tuple[str, ...] = ("sku-1",), **fields: Any) -> Case:
        values: dict[str, Any] = {
            "type": CaseType.RETURN_REFUND,
            "state": CaseState.SUBMITTED,
            "order_id": order_id,
            "buyer_id": "b-1",
            "merchant_id": "m-1",
            "category": "apparel",
            "reason": "no_reason",
            "payment": Payment("alipay", 12_900, T0 - timedelta(days=5)),
            "delivered_at": T0 - timedelta(days=2),
            "items": [Item(sku, 1, 12_900 // len(skus)) for sku in skus],
            "gifts": [],
            "created_at": T0,
            "updated_at": T0,
        }
        values.update(fields)
        return Case(**values)

    return build


def analyze(engine: Engine, table: str) -> None:
    """Fresh planner statistics after a bulk load, so plans are those of a table that size."""
    if engine.dialect.name == "postgresql":
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as connection:
            connection.execute(sa.text(f"VACUUM ANALYZE {table}"))
    else:
        with engine.begin() as connection:
            connection.execute(sa.text("ANALYZE"))


def migrate(engine: Engine, target: str, downgrade: bool = False) -> None:
    """Upgrade (or, with ``downgrade``, downgrade) ``engine``'s database to revision ``target``."""
    config = alembic_config()
    with engine.begin() as connection:
        config.attributes["connection"] = connection
        (command.downgrade if downgrade else command.upgrade)(config, target)


def cases_with_pending_timer(
    uow_factory: SqlUnitOfWorkFactory, engine: Engine, new_case: Callable[..., Case], count: int
) -> None:
    """``count`` cases (order ids ``o-template``, then ``o-1`` ...), each with a pending
    ``merchant_review`` timer due at ``T0``: one armed through the store, the rest set-based copies
    of it (much faster than arming each)."""
    with uow_factory() as uow:
        template = uow.cases.add(new_case(order_id="o-template"))
        timer = Timer(template, "merchant_review", "auto_approve", CaseState.SUBMITTED, 1, T0, T0)
        uow.timers.arm(timer)
        uow.commit()
    columns = [column.name for column in cases.columns if column.name != "id"]
    listed = ", ".join(f'"{name}"' for name in columns)
    copied = listed.replace('"order_id"', "'o-' || CAST(n.i AS TEXT)")
    with engine.begin() as connection:
        connection.execute(
            sa.text(
                "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < :count) "
                f"INSERT INTO cases ({listed}) SELECT {copied} FROM cases, n "
                "WHERE cases.id = :template"
            ),
            {"count": count - 1, "template": template},
        )
        connection.execute(
            sa.text(
                'INSERT INTO timers (case_id, kind, "trigger", state, version, due_at, status, '
                'created_at) SELECT c.id, t.kind, t."trigger", t.state, t.version, t.due_at, '
                "t.status, t.created_at FROM cases c, timers t "
                "WHERE c.id <> :template AND t.case_id = :template"
            ),
            {"template": template},
        )


@pytest.fixture
def statements(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The SQL of every statement run on a ``Checkout`` from now on (deferred writes count
    when they are sent)."""
    sent: list[str] = []
    real_run = Checkout.run

    def counted(self: Checkout, sql: str, parameters: object, many: bool = False) -> object:
        sent.append(sql)
        return real_run(self, sql, parameters, many)

    monkeypatch.setattr(Checkout, "run", counted)
    return sent


def submit_with_order(service: CaseService, app: dict[str, Any]) -> CaseView:
    """Import the order of record the application describes, then submit the application."""
    import_orders_for(OrderService(service.uow_factory, service.clock, service.policy), [app])
    return service.submit(app)
