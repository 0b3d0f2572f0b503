"""ASGI middleware in front of every route: who the client is, which methods the path has, and
whether the caller is authenticated, all before a byte of the body is read.

- The client address is the peer's, or, from a trusted reverse proxy only
  (``AFTERSALES_API_TRUSTED_PROXIES``), the one ``X-Forwarded-For`` names (``auth.client_address``).
- A path that exists without the request's method answers 405 with ``Allow`` listing every
  method of the path (all its routes, not the first one found), and ``OPTIONS`` answers 204
  with the same ``Allow``.
- A protected route (one that depends on ``auth.authenticate``) is authenticated here, so a
  request without a valid token gets 401 whatever its body: a malformed or oversized body from
  an anonymous caller is never parsed (the body guard runs after this).
"""

from __future__ import annotations

from typing import Any

from fastapi.dependencies.models import Dependant
from starlette.concurrency import run_in_threadpool
from starlette.responses import Response
from starlette.routing import BaseRoute, Match
from starlette.types import ASGIApp, Receive, Scope, Send

from entrypoints.http.auth import authenticate, authenticate_header, client_address
from entrypoints.http.problems import ProblemError, problem_response


def _depends_on_authenticate(dependant: Dependant) -> bool:
    return any(
        sub.call is authenticate or _depends_on_authenticate(sub) for sub in dependant.dependencies
    )


def is_protected(route: BaseRoute) -> bool:
    dependant = getattr(route, "dependant", None)
    return dependant is not None and _depends_on_authenticate(dependant)


def allowed_methods(routes: list[BaseRoute], scope: Scope) -> list[str]:
    """Every method the routes serving this path accept, and OPTIONS (answered here)."""
    methods: set[str] = set()
    for route in routes:
        match, _ = route.matches({**scope, "method": "\0"})
        if match is not Match.NONE:
            methods |= set(getattr(route, "methods", None) or ())
    if not methods:
        return []
    return sorted(methods | {"OPTIONS"})


class Gate:
    """``routes``: every route of the app, in the order the router tries them."""

    def __init__(self, app: ASGIApp, routes: list[BaseRoute]) -> None:
        self.app = app
        self.routes = routes
        self._protected: dict[int, bool] = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        app: Any = scope["app"]
        api = app.state.api
        headers = [
            (name.decode("latin-1").lower(), value.decode("latin-1"))
            for name, value in scope["headers"]
        ]
        peer = scope.get("client")
        address = client_address(
            peer[0] if peer else None,
            [value for name, value in headers if name == "x-forwarded-for"],
            api.settings.trusted_proxies,
        )
        scope["client"] = (address, peer[1] if peer else 0)

        routes = self.routes
        route = next((r for r in routes if r.matches(scope)[0] is Match.FULL), None)
        if route is None:
            allow = allowed_methods(routes, scope)
            if allow:
                await self._method_not_allowed(scope, allow)(scope, receive, send)
                return
            await self.app(scope, receive, send)
            return
        if self._is_protected(route):
            authorization = next((v for n, v in headers if n == "authorization"), None)
            try:
                principal = await run_in_threadpool(
                    authenticate_header, api, authorization, address
                )
            except ProblemError as error:
                scope["route"] = route  # for the request metrics' route label
                response = problem_response(
                    error.slug, error.detail, scope.get("path"), error.headers, **error.extra
                )
                await response(scope, receive, send)
                return
            scope.setdefault("state", {})["principal"] = principal
        await self.app(scope, receive, send)

    def _is_protected(self, route: BaseRoute) -> bool:
        known = self._protected.get(id(route))
        if known is None:
            known = self._protected[id(route)] = is_protected(route)
        return known

    @staticmethod
    def _method_not_allowed(scope: Scope, allow: list[str]) -> Response:
        headers = {"Allow": ", ".join(allow)}
        if scope["method"] == "OPTIONS":
            return Response(status_code=204, headers=headers)
        return problem_response(
            "method-not-allowed",
            f"{scope['method']} is not a method of this resource; it allows {headers['Allow']}",
            scope.get("path"),
            headers,
        )
