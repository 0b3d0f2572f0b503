"""Property-based tests of the whole API against its OpenAPI document (schemathesis).

Every operation gets generated requests, valid and invalid, with an admin's token, and every
check schemathesis has (``--checks all``): no server error; a documented status, content type,
headers and body schema; invalid input refused (4xx), valid input accepted (the few answers no
document can predict are listed, with why, in ``schemathesis.toml``, which ``schemathesis run``
reads too). Bounded (``MAX_EXAMPLES`` per operation, on SQLite) so it runs in well under two
minutes; docs/api.md gives the longer run with the CLI.
"""

from __future__ import annotations

import json
import os
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from schemathesis import GenerationMode
from schemathesis.checks import CHECKS, load_all_checks

from config.settings import ApiSettings
from entrypoints.http.spec import DEFAULT_PATH

from .conftest import Api, build_api, fresh_database

#: What the API expects of schemathesis's checks, shared with ``schemathesis run``.
CONFIG = Path(__file__).resolve().parents[2] / "schemathesis.toml"
#: Examples per operation and mode; AFTERSALES_FUZZ_EXAMPLES raises it for a longer local run.
MAX_EXAMPLES = int(os.environ.get("AFTERSALES_FUZZ_EXAMPLES", "25"))
#: Operations whose schema-valid requests succeed often enough to require one success.
SUCCEEDS = {
    ("GET", "/healthz"),
    ("GET", "/readyz"),
    ("GET", "/metrics"),
    ("GET", "/cases"),
    ("POST", "/events"),
    ("GET", "/events/dead-letters"),
}


@pytest.fixture(scope="module")
def fuzzed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Api]:
    folder = tmp_path_factory.mktemp("schemathesis")
    # SQLite in CI (time); AFTERSALES_FUZZ_BACKEND=postgres fuzzes the other backend.
    with fresh_database(os.environ.get("AFTERSALES_FUZZ_BACKEND", "sqlite"), folder) as url:
        api = build_api(
            url, folder, ApiSettings(rate_limit_per_minute=0, auth_failures_per_minute=0)
        )
        # A few cases and a dead letter, so that ids 1-3 exist and some requests succeed.
        for number in range(3):
            api.submit(order_id=f"o-{number}")
        api.events.ingest(
            {
                "event_id": "seed-1",
                "source": "sf-express",
                "type": "parcel.lost",
                "occurred_at": "2026-11-20T11:00:00+08:00",
                "case_id": 999,
            }
        )
        yield api


@pytest.fixture(scope="module")
def api_schema(fuzzed: Api) -> schemathesis.BaseSchema:
    secret = fuzzed.auth("admin:fuzzer")["Authorization"].removeprefix("Bearer ")
    settings = tomllib.loads(CONFIG.read_text(encoding="utf-8"))
    # An admin's token: every operation reachable. Negative cases also send none.
    settings["auth"] = {"openapi": {"bearerToken": {"bearer": secret}}}
    config = schemathesis.Config.from_dict(settings)
    return schemathesis.openapi.from_asgi("/openapi.json", fuzzed.app, config=config)


def _every_check() -> list[Any]:
    load_all_checks()
    return list(CHECKS.get_all())


def _operations() -> list[Any]:
    """(path, method, mode) of every operation in the committed document (test_openapi keeps it
    equal to the served one); negative mode only where there is input to get wrong."""
    document = json.loads(DEFAULT_PATH.read_text(encoding="utf-8"))
    found = []
    for path, item in document["paths"].items():
        for method, operation in item.items():
            modes = [GenerationMode.POSITIVE]
            if operation.get("parameters") or operation.get("requestBody"):
                modes.append(GenerationMode.NEGATIVE)
            for mode in modes:
                found.append(
                    pytest.param(
                        path, method.upper(), mode, id=f"{method.upper()} {path} {mode.value}"
                    )
                )
    return found


@pytest.mark.parametrize(("path", "method", "mode"), _operations())
def test_operation_conforms_to_the_document(
    api_schema: schemathesis.BaseSchema,
    path: str,
    method: str,
    mode: GenerationMode,
) -> None:
    operation = api_schema[path][method]
    every_check = _every_check()

    @given(case=operation.as_strategy(generation_mode=mode))
    @settings(
        max_examples=MAX_EXAMPLES,
        deadline=None,
        suppress_health_check=list(HealthCheck),
        derandomize=True,
        database=None,
        phases=[Phase.explicit, Phase.generate],
    )
    def check(case: schemathesis.Case) -> None:
        response = case.call_and_validate(checks=every_check)
        if mode is GenerationMode.POSITIVE:
            # The token was sent: a 401 would mean the run never got past authentication.
            assert response.status_code != 401, response.text
            statuses.add(response.status_code)

    statuses: set[int] = set()

    check()
    if mode is GenerationMode.POSITIVE and (method, path) in SUCCEEDS:
        # Some generated requests got through to the service and succeeded.
        assert any(200 <= status < 300 for status in statuses), statuses
