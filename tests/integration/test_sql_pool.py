"""The PostgreSQL connection pool is sized by the settings (``AFTERSALES_DATABASE_POOL_*``):
a process holds at most ``pool_size + max_overflow`` connections, waits ``pool_timeout_s`` for
one, and replaces connections older than ``pool_recycle_s``."""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from config.settings import DatabaseSettings, Settings
from entrypoints.composition import make_engine_for
from entrypoints.processes import wait_until
from persistence.db import PoolSizing, dispose_engine, make_engine

from .conftest import postgres_param

pytestmark = pytest.mark.parametrize("backend", [postgres_param()])


@pytest.fixture
def server_url(backend: str) -> Iterator[str]:
    """The test server under a URL of this test's own (engines are one per URL and process)."""
    base = os.environ.get("AFTERSALES_TEST_POSTGRES_URL")
    if not base:
        pytest.fail("AFTERSALES_REQUIRE_POSTGRES is set but AFTERSALES_TEST_POSTGRES_URL is not")
    url = f"{base}?application_name=aftersales_pool_{secrets.token_hex(4)}"
    yield url
    dispose_engine(url)


def engine_with(url: str, **pool: float) -> Engine:
    settings = Settings(database=DatabaseSettings(url=url, **pool))
    return make_engine_for(settings)


def test_a_process_holds_at_most_pool_size_plus_overflow(server_url: str) -> None:
    # given a pool of one connection and one more at a peak, waiting at most 0.2 s
    engine = engine_with(server_url, pool_size=1, max_overflow=1, pool_timeout_s=0.2)

    # when two connections are out, then a third waits and fails naming the limit
    with engine.connect() as first, engine.connect() as second:
        assert first.scalar(sa.text("SELECT 1")) == second.scalar(sa.text("SELECT 1")) == 1
        with pytest.raises(sa.exc.TimeoutError, match="QueuePool limit of size 1 overflow 1"):
            engine.connect()

    # and after they are returned, the pool serves again
    with engine.connect() as again:
        assert again.scalar(sa.text("SELECT 1")) == 1


def test_old_connections_are_replaced_after_pool_recycle_s(server_url: str) -> None:
    # given connections recycled after one second
    engine = engine_with(server_url, pool_size=1, max_overflow=0, pool_recycle_s=1)
    with engine.connect() as connection:
        first_backend = connection.scalar(sa.text("SELECT pg_backend_pid()"))

    def backend_changed() -> bool:
        with engine.connect() as connection:
            return bool(connection.scalar(sa.text("SELECT pg_backend_pid()")) != first_backend)

    # then a later checkout gets a new server connection
    assert wait_until(backend_changed, "a recycled connection", timeout=30)


def test_the_pool_is_fixed_when_the_engine_is_built(server_url: str) -> None:
    # given the composition root built the engine with its sizing
    engine_with(server_url, pool_size=2)

    # then code without an opinion shares it, and a different sizing is refused loudly
    assert make_engine(server_url) is make_engine(server_url, PoolSizing(size=2))
    with pytest.raises(ValueError, match="was built with"):
        make_engine(server_url, PoolSizing(size=3))
