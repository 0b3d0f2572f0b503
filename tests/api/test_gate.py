"""What every request meets before its route: authentication before the body is read, the
methods a path has (``Allow``, 405, OPTIONS), and whose address a request comes from."""

from __future__ import annotations

import json
from ipaddress import ip_network
from typing import Any

import pytest

from entrypoints.http.auth import client_address
from entrypoints.http.spec import DEFAULT_PATH

from .conftest import Api, application, problem

#: (method, path, body, content type) sent without a token: each would be refused for its body
#: (malformed JSON 400, not JSON 415, invalid 422, an unknown query parameter 422) if the body
#: were looked at first.
ANONYMOUS_BODIES = [
    ("POST", "/cases", b"{not json", "application/json"),
    ("POST", "/cases", b"<xml/>", "application/xml"),
    ("POST", "/cases", json.dumps({"type": "nonsense"}).encode(), "application/json"),
    ("POST", "/cases?debug=1", json.dumps(application()).encode(), "application/json"),
    ("POST", "/cases/1/transitions", b"[" * 100 + b"]" * 100, "application/json"),
    ("POST", "/events", b"\x00\xff", "application/json"),
    ("POST", "/orders", b"{}", "text/plain"),
    ("POST", "/events/dead-letters/1/replay", b'{"reason": "\\u0000"}', "application/json"),
]


@pytest.mark.parametrize(
    ("method", "path", "body", "content_type"),
    ANONYMOUS_BODIES,
    ids=[f"{m} {p} {c}" for m, p, _, c in ANONYMOUS_BODIES],
)
def test_an_anonymous_request_is_refused_before_its_body_is_read(
    api: Api, method: str, path: str, body: bytes, content_type: str
) -> None:
    # when a request without a token sends a body that is wrong in itself
    response = api.client.request(
        method, path, content=body, headers={"content-type": content_type}
    )
    # then the answer is about the token, not the body
    problem(response, 401, "unauthorized")
    assert response.headers["www-authenticate"].startswith("Bearer")


def test_an_oversized_body_from_an_anonymous_caller_is_401_not_413(api: Api) -> None:
    body = b'{"type": "' + b"x" * (api.app.state.api.settings.max_body_bytes + 10) + b'"}'
    response = api.client.post("/cases", content=body, headers={"content-type": "application/json"})
    problem(response, 401, "unauthorized")


def test_an_authenticated_request_still_gets_its_body_checked(api: Api) -> None:
    response = api.client.post(
        "/cases",
        content=b"{not json",
        headers={**api.auth("buyer:b1"), "content-type": "application/json"},
    )
    problem(response, 400, "malformed-request")


def _documented_methods() -> list[Any]:
    document = json.loads(DEFAULT_PATH.read_text(encoding="utf-8"))
    return [
        pytest.param(
            path.replace("{case_id}", "1").replace("{letter_id}", "1").replace("{order_id}", "o-1"),
            sorted(method.upper() for method in item),
            id=path,
        )
        for path, item in document["paths"].items()
    ]


@pytest.mark.parametrize(("path", "methods"), _documented_methods())
def test_options_and_405_list_every_method_of_the_path(
    api: Api, path: str, methods: list[str]
) -> None:
    # given the methods the document gives the path (GET and POST for /cases)
    allow = ", ".join(sorted({*methods, "OPTIONS"}))
    # when OPTIONS asks, then 204 names all of them (before: the first route's only, POST)
    options = api.client.options(path)
    assert options.status_code == 204, options.text
    assert options.headers["allow"] == allow
    # and a method the path does not have is 405 with the same Allow, token or not
    for headers in ({}, api.auth("admin")):
        refused = api.client.request("PATCH", path, headers=headers)
        problem(refused, 405, "method-not-allowed")
        assert refused.headers["allow"] == allow


def test_an_unknown_path_is_404_for_every_method(api: Api) -> None:
    for method in ("GET", "OPTIONS", "DELETE"):
        problem(api.client.request(method, "/nowhere"), 404, "not-found")


PROXY = [ip_network("10.0.0.0/8"), ip_network("127.0.0.1/32")]


@pytest.mark.parametrize(
    ("peer", "forwarded", "trusted", "expected"),
    [
        # nothing trusted (the default): the header is ignored
        ("127.0.0.1", ["6.6.6.6"], [], "127.0.0.1"),
        # a peer that is not a trusted proxy: the header is ignored
        ("203.0.113.9", ["6.6.6.6"], PROXY, "203.0.113.9"),
        # a trusted proxy: the hop it appended (the rightmost), not what the client wrote
        ("127.0.0.1", ["6.6.6.6, 198.51.100.7"], PROXY, "198.51.100.7"),
        # two trusted proxies in a row, the header over two lines
        ("127.0.0.1", ["6.6.6.6, 198.51.100.7", "10.1.2.3"], PROXY, "198.51.100.7"),
        # a trusted proxy that forwards nothing: itself
        ("10.0.0.5", [], PROXY, "10.0.0.5"),
        # garbage from a client behind the proxy is its address as far as the limit goes
        ("10.0.0.5", ["not-an-address"], PROXY, "not-an-address"),
    ],
)
def test_the_client_address_believes_only_trusted_proxies(
    peer: str, forwarded: list[str], trusted: list[Any], expected: str
) -> None:
    assert client_address(peer, forwarded, trusted) == expected
