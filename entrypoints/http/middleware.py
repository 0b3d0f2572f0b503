"""ASGI middleware: the body guard (size, media type, JSON syntax) and request metrics.

The guard reads a request body once, bounded, before any route sees it: a body over the limit is
413 without being read further, one that is not JSON is 415 or 400, and strings the databases
cannot store (NUL characters, lone surrogates) or nesting deeper than anyone needs are 422. The
route then reads the same bytes again, and ``request.state.body`` keeps them for the
idempotency fingerprint.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from entrypoints.http.problems import problem_response

_WITH_BODY = frozenset({"POST", "PUT", "PATCH"})
#: Deeper JSON than this is refused: no document of ours nests past a handful of levels, and
#: deep nesting only serves to exhaust the recursion of a parser or encoder further on.
MAX_DEPTH = 32


class _Refused(Exception):
    def __init__(self, slug: str, detail: str, **extra: Any) -> None:
        super().__init__(detail)
        self.slug, self.detail, self.extra = slug, detail, extra


def _is_json(content_type: str) -> bool:
    media = content_type.split(";", 1)[0].strip().lower()
    return media == "application/json" or (
        media.startswith("application/") and media.endswith("+json")
    )


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _check_text(value: str, where: str) -> None:
    if "\x00" in value:
        raise _Refused("invalid-input", f"{where}: NUL characters are not allowed", field=where)
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise _Refused(
            "invalid-input", f"{where}: not valid Unicode (a lone surrogate)", field=where
        ) from None


def check_document(document: Any) -> None:
    """Walks the parsed body without recursion; raises ``_Refused`` at the first bad value."""
    stack: list[tuple[Any, str, int]] = [(document, "body", 1)]
    while stack:
        value, where, depth = stack.pop()
        if depth > MAX_DEPTH:
            raise _Refused(
                "invalid-input", f"{where}: nested deeper than {MAX_DEPTH} levels", field=where
            )
        if isinstance(value, str):
            _check_text(value, where)
        elif isinstance(value, dict):
            for key, item in value.items():
                _check_text(key, f"{where} (a key)")
                stack.append((item, f"{where}.{key}", depth + 1))
        elif isinstance(value, list):
            stack.extend((item, f"{where}.{index}", depth + 1) for index, item in enumerate(value))


def parse_body(body: bytes, content_type: str) -> Any:
    if not _is_json(content_type):
        raise _Refused(
            "unsupported-media-type",
            f"send application/json, not {content_type or 'no Content-Type'}",
        )
    try:
        document = json.loads(body.decode("utf-8"), parse_constant=_reject_constant)
    except UnicodeDecodeError:
        raise _Refused("malformed-request", "the body is not UTF-8") from None
    except RecursionError:
        raise _Refused("malformed-request", "the body nests too deeply") from None
    except ValueError as error:
        raise _Refused("malformed-request", f"the body is not valid JSON: {error}") from None
    check_document(document)
    return document


class BodyGuard:
    def __init__(
        self, app: ASGIApp, max_body_bytes: int, form_prefixes: tuple[str, ...] = ()
    ) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes
        #: Paths whose bodies are HTML forms, not JSON (the console): only the size is checked
        #: here; their routes parse and check the form.
        self.form_prefixes = form_prefixes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] not in _WITH_BODY:
            await self.app(scope, receive, send)
            return
        headers = {
            key.decode("latin-1").lower(): value.decode("latin-1")
            for key, value in scope["headers"]
        }
        path = scope.get("path")
        limit = self.max_body_bytes
        too_large = f"the body exceeds {limit} bytes"
        declared = headers.get("content-length", "")
        if declared.strip().isdigit() and int(declared) > limit:
            await problem_response("payload-too-large", too_large, path)(scope, receive, send)
            return
        chunks: list[bytes] = []
        size = 0
        more = True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                await problem_response("payload-too-large", too_large, path)(scope, receive, send)
                return
            chunks.append(chunk)
            more = bool(message.get("more_body", False))
        body = b"".join(chunks)
        if body and not str(path).startswith(self.form_prefixes):
            try:
                parse_body(body, headers.get("content-type", ""))
            except _Refused as refused:
                response = problem_response(refused.slug, refused.detail, path, **refused.extra)
                await response(scope, receive, send)
                return
        scope.setdefault("state", {})["body"] = body
        sent = False

        async def replay() -> Message:
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)


class Observe:
    """Counts requests and their durations per route template and status (``/metrics``)."""

    def __init__(self, app: ASGIApp, record: Callable[[str, str, int, float], None]) -> None:
        self.app = app
        self.record = record

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def watch(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, watch)
        finally:
            route = scope.get("route")
            # The template, not the path: ``/cases/{case_id}``, so ids do not explode the labels.
            template = getattr(route, "path", None) or "unmatched"
            self.record(scope["method"], template, status, time.perf_counter() - started)
