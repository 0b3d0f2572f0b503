"""The OpenAPI document: served at /openapi.json, committed as docs/openapi.json, and current."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from config.policy import load_policy
from entrypoints.http.spec import DEFAULT_PATH, main, openapi_text

from .conftest import Api


def test_committed_document_is_current() -> None:
    # A failure means the API changed: run `python -m entrypoints.http.spec` and commit the file.
    assert DEFAULT_PATH.read_text(encoding="utf-8") == openapi_text()
    assert main(["--check", str(DEFAULT_PATH)]) == 0


@pytest.mark.parametrize("args", [["--help"], ["-x"], ["a.json", "b.json"]])
def test_the_generator_refuses_what_is_not_a_path_and_writes_nothing(
    args: list[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: Any
) -> None:
    # before: `python -m entrypoints.http.spec --help` wrote the document to a file "--help"
    monkeypatch.chdir(tmp_path)
    assert main(args) == 2
    assert "usage:" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_served_document_is_the_committed_one(api: Api) -> None:
    served = api.client.get("/openapi.json")
    assert served.status_code == 200
    assert served.json() == json.loads(DEFAULT_PATH.read_text(encoding="utf-8"))
    assert "swagger" in api.client.get("/docs").text.lower()


def test_every_operation_but_the_open_ones_needs_a_token_and_answers_problems() -> None:
    document = json.loads(openapi_text())
    assert document["components"]["securitySchemes"]["bearerToken"]["scheme"] == "bearer"
    for path, item in document["paths"].items():
        for method, operation in item.items():
            if path in ("/healthz", "/readyz"):
                assert "security" not in operation
                continue
            assert operation["security"] == [{"bearerToken": []}], (method, path)
            assert "401" in operation["responses"], (method, path)
            for status, response in operation["responses"].items():
                if status >= "400":
                    assert list(response["content"]) == ["application/problem+json"], (path, status)


def test_the_document_declares_the_values_and_patterns_the_api_accepts() -> None:
    # a schema-valid request is one the API can accept: the document says which reasons,
    # categories and triggers exist, and what the conditional headers look like
    document = json.loads(openapi_text())
    schemas = document["components"]["schemas"]
    application = schemas["Application"]["properties"]
    assert "no_reason" in application["reason"]["enum"]
    assert application["type"] == {"$ref": "#/components/schemas/CaseType"}
    categories = application["category"]["anyOf"][0]["enum"]
    assert "clothing" in categories
    assert schemas["OrderLineIn"]["properties"]["category"]["enum"] == categories
    assert {"approve", "ship_back", "retry_refund"} <= set(
        schemas["FireIn"]["properties"]["trigger"]["enum"]
    )
    assert schemas["ExtendIn"]["oneOf"] == [{"required": ["until"]}, {"required": ["hours"]}]
    headers = {
        (path, method, parameter["name"]): parameter["schema"]
        for path, item in document["paths"].items()
        for method, operation in item.items()
        for parameter in operation.get("parameters", [])
        if parameter["in"] == "header"
    }
    assert headers[("/cases/{case_id}/transitions", "post", "If-Match")]["pattern"]
    assert headers[("/cases/{case_id}", "get", "If-None-Match")]["pattern"]
    keys = [schema for (_, _, name), schema in headers.items() if name == "Idempotency-Key"]
    assert len(keys) == 7 and all(schema["pattern"] == "^[!-~]+$" for schema in keys)


def test_the_served_document_declares_the_configured_policy(make_api: Any, tmp_path: Path) -> None:
    # given a policy file that adds a reason and a category
    policy = tmp_path / "policy.toml"
    defaults = load_policy()
    reasons = sorted({*defaults.reasons, "changed_mind"})
    categories = sorted({*defaults.categories, "furniture"})
    policy.write_text(f"reasons = {reasons!r}\ncategories = {categories!r}\n", encoding="utf-8")
    # when the app serves its document
    api = make_api(policy_file=policy)
    schemas = api.client.get("/openapi.json").json()["components"]["schemas"]
    # then it lists them
    assert schemas["Application"]["properties"]["reason"]["enum"] == reasons
    assert schemas["OrderLineIn"]["properties"]["category"]["enum"] == categories
