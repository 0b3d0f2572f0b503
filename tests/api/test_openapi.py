"""The OpenAPI document: served at /openapi.json, committed as docs/openapi.json, and current."""

from __future__ import annotations

import json

from entrypoints.http.spec import DEFAULT_PATH, main, openapi_text

from .conftest import Api


def test_committed_document_is_current() -> None:
    # A failure means the API changed: run `python -m entrypoints.http.spec` and commit the file.
    assert DEFAULT_PATH.read_text(encoding="utf-8") == openapi_text()
    assert main(["--check", str(DEFAULT_PATH)]) == 0


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
