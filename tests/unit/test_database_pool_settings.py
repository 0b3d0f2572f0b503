"""The database pool's settings: read from their documented variables, bounded, and turned into
the engine's pool sizing by the composition root."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from config.settings import DatabaseSettings
from entrypoints.composition import pool_sizing
from persistence.db import PoolSizing


def test_defaults_are_sqlalchemys(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("POOL_SIZE", "MAX_OVERFLOW", "POOL_TIMEOUT_S", "POOL_RECYCLE_S"):
        monkeypatch.delenv(f"AFTERSALES_DATABASE_{name}", raising=False)

    assert pool_sizing(DatabaseSettings()) == PoolSizing(
        size=5, max_overflow=10, timeout_s=30.0, recycle_s=0
    )


def test_read_from_the_documented_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    # given
    monkeypatch.setenv("AFTERSALES_DATABASE_POOL_SIZE", "3")
    monkeypatch.setenv("AFTERSALES_DATABASE_MAX_OVERFLOW", "0")
    monkeypatch.setenv("AFTERSALES_DATABASE_POOL_TIMEOUT_S", "2.5")
    monkeypatch.setenv("AFTERSALES_DATABASE_POOL_RECYCLE_S", "1800")

    # when
    sizing = pool_sizing(DatabaseSettings())

    # then
    assert sizing == PoolSizing(size=3, max_overflow=0, timeout_s=2.5, recycle_s=1800)


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("AFTERSALES_DATABASE_POOL_SIZE", "0"),
        ("AFTERSALES_DATABASE_POOL_SIZE", "100000"),
        ("AFTERSALES_DATABASE_MAX_OVERFLOW", "-1"),
        ("AFTERSALES_DATABASE_POOL_TIMEOUT_S", "0"),
        ("AFTERSALES_DATABASE_POOL_RECYCLE_S", "-5"),
    ],
)
def test_out_of_range_values_are_refused_naming_the_variable(
    monkeypatch: pytest.MonkeyPatch, variable: str, value: str
) -> None:
    monkeypatch.setenv(variable, value)

    with pytest.raises(ValidationError, match=variable):
        DatabaseSettings()
