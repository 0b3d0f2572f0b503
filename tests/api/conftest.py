"""Fixtures of the HTTP API tests: an app on its own database, clients, tokens per role.

Tests taking ``api`` run on a SQLite file and on a throwaway PostgreSQL database (from
``AFTERSALES_TEST_POSTGRES_URL``; skipped when unset unless ``AFTERSALES_REQUIRE_POSTGRES`` is
set), as the integration tests do. The app is ``create_app`` itself, called by httpx through
Starlette's ``TestClient``: the same middleware, handlers and database as ``aftersales serve``.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from fastapi.testclient import TestClient
from sqlalchemy.pool import NullPool

from config.settings import ApiSettings, BrokerSettings, DatabaseSettings, Settings
from entrypoints.composition import http_app
from entrypoints.samples import import_orders_for
from persistence.db import dispose_engine, make_engine, normalize_url
from persistence.migrate import upgrade
from persistence.tokens import SqlTokenStore
from workflow.clock import FakeClock
from workflow.events.ingestion import EventService
from workflow.model import Actor
from workflow.orders_service import OrderService
from workflow.service import CaseService
from workflow.states import Role

POSTGRES_ENV = "AFTERSALES_TEST_POSTGRES_URL"
REQUIRE_POSTGRES_ENV = "AFTERSALES_REQUIRE_POSTGRES"

#: 10:00 in Shanghai, two days after the sample delivery.
NOW = datetime.fromisoformat("2026-11-20T10:00:00+08:00")


def application(**overrides: Any) -> dict[str, Any]:
    """A no-reason return of a ¥199 jacket with a ¥5 gift, delivered on 2026-11-18."""
    base: dict[str, Any] = {
        "type": "return_refund",
        "order_id": "o-1",
        "buyer_id": "b1",
        "merchant_id": "m1",
        "category": "clothing",
        "reason": "no_reason",
        "payment": {
            "channel": "wechat_pay",
            "amount": 19900,
            "paid_at": "2026-11-15T10:00:00+08:00",
        },
        "delivered_at": "2026-11-18T15:00:00+08:00",
        "items": [{"sku": "jacket", "quantity": 1, "unit_price": 19900}],
        "gifts": [{"sku": "scarf", "quantity": 1, "value": 500}],
    }
    return {**base, **overrides}


def _postgres_param() -> Any:
    marks: list[Any] = [pytest.mark.postgres]
    if not os.environ.get(POSTGRES_ENV) and not os.environ.get(REQUIRE_POSTGRES_ENV):
        marks.append(pytest.mark.skip(reason=f"PostgreSQL tests need {POSTGRES_ENV}"))
    return pytest.param("postgres", id="postgres", marks=marks)


BACKENDS = [pytest.param("sqlite", id="sqlite"), _postgres_param()]


@contextmanager
def fresh_database(backend: str, folder: Path) -> Iterator[str]:
    """A migrated database nobody else uses; PostgreSQL's is dropped afterwards."""
    if backend == "sqlite":
        url = f"sqlite:///{folder / 'db' / 'api.db'}"
        upgrade(url)
        try:
            yield url
        finally:
            dispose_engine(url)
        return
    server_url = os.environ.get(POSTGRES_ENV)
    if not server_url:
        pytest.fail(f"{REQUIRE_POSTGRES_ENV} is set but {POSTGRES_ENV} is not")
    server = sa.create_engine(
        normalize_url(server_url), isolation_level="AUTOCOMMIT", poolclass=NullPool
    )
    name = f"aftersales_api_{secrets.token_hex(6)}"
    url = normalize_url(server_url).set(database=name).render_as_string(hide_password=False)
    with server.connect() as connection:
        connection.exec_driver_sql(f'CREATE DATABASE "{name}"')
    try:
        upgrade(url)
        yield url
    finally:
        dispose_engine(url)
        with server.connect() as connection:
            connection.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        server.dispose()


@dataclass
class Api:
    """One app on one database, with the services behind it for arranging a test's world."""

    client: TestClient
    clock: FakeClock
    database_url: str
    tokens: SqlTokenStore
    _headers: dict[str, dict[str, str]] = field(default_factory=dict)

    @property
    def app(self) -> Any:
        return self.client.app

    @property
    def cases(self) -> CaseService:
        service: CaseService = self.app.state.api.cases
        return service

    @property
    def events(self) -> EventService:
        service: EventService = self.app.state.api.events
        return service

    def token(self, scope: str) -> str:
        """A new token's secret for ``scope`` (``admin``, ``buyer:b1``, ``producer:sf``...)."""
        role, _, subject = scope.partition(":")
        _, secret = self.tokens.create(role, subject or None, None, self.clock.now())
        return secret

    def auth(self, scope: str) -> dict[str, str]:
        """``Authorization`` headers of one token per scope (made on first use)."""
        if scope not in self._headers:
            self._headers[scope] = {"Authorization": f"Bearer {self.token(scope)}"}
        return dict(self._headers[scope])

    def import_order(self, app: dict[str, Any]) -> dict[str, Any]:
        """Import the order of record ``app`` describes (through the service); ``app``."""
        cases = self.cases
        result = import_orders_for(
            OrderService(cases.uow_factory, cases.clock, cases.policy), [app]
        )
        assert not result.refused, result
        return app

    def submit(self, **overrides: Any) -> int:
        """A case submitted through the service, as b1 by default; returns its id."""
        app = self.import_order(application(**overrides))
        case_id = self.cases.submit(app).case.id
        assert case_id is not None
        return case_id

    def fire(self, case_id: int, trigger: str, actor: str, **kwargs: Any) -> None:
        self.cases.fire(case_id, trigger, Actor.parse(actor), **kwargs)

    def history(self, case_id: int) -> list[str]:
        return [record.trigger for record in self.cases.history(case_id)]


def build_api(
    database_url: str, folder: Path, api_settings: ApiSettings | None = None, **settings: Any
) -> Api:
    clock = FakeClock(NOW)
    configured = Settings(
        database=DatabaseSettings(url=database_url),
        broker=BrokerSettings(url=settings.pop("broker_url", f"filesystem://{folder / 'broker'}")),
        api=api_settings or ApiSettings(rate_limit_per_minute=0),
        policy_file=settings.pop("policy_file", None),
        clock_file=None,
        **settings,
    )
    app = http_app(configured, clock)
    client = TestClient(app, raise_server_exceptions=True)
    return Api(client, clock, database_url, SqlTokenStore(make_engine(database_url)))


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def database_url(backend: str, tmp_path: Path) -> Iterator[str]:
    with fresh_database(backend, tmp_path) as url:
        yield url


@pytest.fixture
def api(database_url: str, tmp_path: Path) -> Api:
    return build_api(database_url, tmp_path)


@pytest.fixture
def make_api(tmp_path: Path) -> Iterator[Callable[..., Api]]:
    """Apps with other settings, on SQLite (limits, readiness)."""
    made: list[str] = []

    def make(api_settings: ApiSettings | None = None, **settings: Any) -> Api:
        folder = tmp_path / f"app{len(made)}"
        url = f"sqlite:///{folder / 'api.db'}"
        upgrade(url)
        made.append(url)
        return build_api(url, folder, api_settings, **settings)

    yield make
    for url in made:
        dispose_engine(url)


def problem(response: Any, status: int, slug: str) -> dict[str, Any]:
    """Asserts an RFC 9457 problem of that status and type; returns its body."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    body: dict[str, Any] = response.json()
    assert body["type"] == f"/problems/{slug}", body
    assert body["status"] == status
    assert body["title"]
    return body


ADMIN_REASON = {"reason": "checked with the buyer by phone"}
BUYER = Actor(Role.BUYER, "b1")
