"""``create_app(context, metrics)``: the HTTP API as a FastAPI app over services already wired.

No module creates an app at import time: the composition root (``composition.http_app``) builds
one for ``aftersales serve`` and for tests on a throwaway database. ``openapi_document()`` builds
the same routes without any service, which is how docs/openapi.json is generated.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from importlib.metadata import PackageNotFoundError, version
from typing import Any

from fastapi import Depends, FastAPI, Request
from fastapi.dependencies.models import Dependant
from fastapi.openapi.utils import get_openapi
from starlette.routing import BaseRoute, Route

from config.policy import Policy, load_policy
from entrypoints.http import cases, events, ops, orders, problems, stats
from entrypoints.http.console.mount import console_routes, install_console
from entrypoints.http.context import ApiContext
from entrypoints.http.gate import Gate
from entrypoints.http.metrics import ApiMetrics
from entrypoints.http.middleware import BodyGuard, Observe
from entrypoints.http.problems import ProblemError
from tasks.kick import RelayKicker
from workflow.definitions import TRIGGERS
from workflow.events.envelope import Envelope
from workflow.orders import OrderIn
from workflow.service import MAX_DEADLINE_EXTENSION

DESCRIPTION = """\
After-sales cases (return-and-refund, exchange, repair, refund-only) moving through their state
machines, and the inbound events that move them. See docs/api.md.

- **Authentication**: every operation but `/healthz`, `/readyz` and this document needs
  `Authorization: Bearer <token>` (`aftersales tokens create --role ...`).
- **Authorization**: buyers and merchants see and act on their own cases and orders only;
  producers send events of their own source, the order system imports orders; admins do
  everything, with a reason on forced transitions.
- **Orders of record**: an application names an order imported before (`POST /orders`); the
  case's facts (payment, prices, categories, delivery, gifts) come from that order.
- **Concurrency**: a case's `ETag` is its version; send it back as `If-Match` to get 412 instead
  of acting on a case that moved.
- **Retries**: every POST takes an `Idempotency-Key`; a repeat returns the first response.
- **Errors**: `application/problem+json` (RFC 9457) with a stable `type`.
"""


def _version() -> str:
    try:
        return version("aftersales")
    except PackageNotFoundError:  # pragma: no cover - running from a bare checkout
        return "0.0.0"


@dataclass(frozen=True)
class Vocabulary:
    """What the configuration decides and the document declares: the values a field accepts
    (the policy's reasons and categories) and the longest deadline extension."""

    reasons: frozenset[str]
    categories: frozenset[str]
    max_deadline_extension: timedelta

    @classmethod
    def of(cls, policy: Policy, max_deadline_extension: timedelta) -> Vocabulary:
        return cls(policy.reasons, policy.categories, max_deadline_extension)


def create_app(
    context: ApiContext, metrics: ApiMetrics, relay_kicker: RelayKicker | None = None
) -> FastAPI:
    """The API's routes over ``context``; the composition root (``entrypoints.composition
    .http_app``) builds the context, the metrics and the kicker."""
    app = _build(Vocabulary.of(context.cases.policy, context.cases.max_deadline_extension))
    app.state.api = context
    app.state.relay_kicker = relay_kicker
    app.state.metrics = metrics
    install_console(app, context.settings)
    # The last added runs first: metrics around everything, then the gate (client address,
    # methods, authentication), then the body guard, so no anonymous body is ever parsed.
    app.add_middleware(
        BodyGuard, max_body_bytes=context.settings.max_body_bytes, form_prefixes=("/console/",)
    )
    app.add_middleware(Gate, routes=_routes(app))
    app.add_middleware(Observe, record=metrics.record)
    return app


#: The API's routers, in the order they are included.
ROUTERS = (orders.router, cases.router, events.router, ops.router, stats.router)


def _routes(app: FastAPI) -> list[BaseRoute]:
    """Every route, the app's own (the document) first, then the API's and the console's, as
    the router tries them (FastAPI keeps included routers behind an object of its own; their
    routes are these)."""
    own = [route for route in app.router.routes if isinstance(route, Route)]
    api = [route for router in ROUTERS for route in router.routes]
    return [*own, *api, *console_routes()]


def _query_names(dependant: Dependant) -> set[str]:
    names = {field.alias for field in dependant.query_params}
    for sub in dependant.dependencies:
        names |= _query_names(sub)
    return names


async def reject_unknown_query(request: Request) -> None:
    """A query parameter no route declares is refused (a typo must not pass as no filter)."""
    if not request.query_params:
        return
    dependant = getattr(request.scope.get("route"), "dependant", None)
    if dependant is None:
        return
    for name in request.query_params:
        if name not in _query_names(dependant):
            raise ProblemError(
                "invalid-input", f"unknown query parameter {name!r}", field=f"query.{name}"
            )


def _build(vocabulary: Vocabulary) -> FastAPI:
    app = FastAPI(
        dependencies=[Depends(reject_unknown_query)],
        title="aftersales",
        version=_version(),
        description=DESCRIPTION,
        openapi_url="/openapi.json",
        # Served by the console with local files (entrypoints/http/console/api_docs.py).
        docs_url=None,
        redoc_url=None,
    )
    problems.install(app)
    for router in ROUTERS:
        app.include_router(router)

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = _document(app, vocabulary)
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
    return app


def _document(app: FastAPI, vocabulary: Vocabulary) -> dict[str, Any]:
    document = get_openapi(
        title=app.title,
        version=app.version,
        description=app.description,
        routes=app.routes,
    )
    schemas: dict[str, Any] = document.setdefault("components", {}).setdefault("schemas", {})
    # Error responses are problem details, whatever FastAPI assumed.
    for item in document["paths"].values():
        for operation in item.values():
            for parameter in operation.get("parameters", []):
                # An optional parameter is absent, never null: a query or header has no null
                # (``If-Match: null`` is the text "null").
                schema = parameter.get("schema", {})
                variants = [v for v in schema.get("anyOf", []) if v != {"type": "null"}]
                if len(variants) == 1 and len(schema["anyOf"]) == 2:
                    rest = {k: v for k, v in schema.items() if k != "anyOf"}
                    parameter["schema"] = {**variants[0], **rest}
            for status, response in operation.get("responses", {}).items():
                content = response.get("content", {})
                body = content.get("application/json", {})
                if status[:1] in "45" and body.get("schema", {}).get("$ref", "").endswith(
                    "/Problem"
                ):
                    content[problems.PROBLEM_JSON] = content.pop("application/json")
    # The event envelope of POST /events, from the model the service parses it with.
    envelope = Envelope.model_json_schema(ref_template="#/components/schemas/{model}")
    schemas.update(envelope.pop("$defs", {}))
    schemas[str(envelope.get("title", "AftersalesEvent"))] = envelope
    # The order document of POST /orders, from the model the import parses it with.
    order = OrderIn.model_json_schema(ref_template="#/components/schemas/{model}")
    schemas.update(order.pop("$defs", {}))
    schemas["OrderOfRecord"] = {**order, "title": "OrderOfRecord"}
    _declare_vocabulary(schemas, vocabulary)
    # FastAPI's own validation error shapes are never sent: errors are Problems.
    for unused in ("HTTPValidationError", "ValidationError"):
        schemas.pop(unused, None)
    document["components"]["schemas"] = dict(sorted(schemas.items()))
    _no_nul_characters(document)
    return document


def _declare_vocabulary(schemas: dict[str, Any], vocabulary: Vocabulary) -> None:
    """Enumerations the models cannot know (they come from the policy file) and the configured
    bounds, so a client (or a fuzzer) learns them from the document, not from a 422."""
    reasons = {"type": "string", "enum": sorted(vocabulary.reasons)}
    categories = {"type": "string", "enum": sorted(vocabulary.categories)}
    application = schemas["Application"]["properties"]
    application["reason"] = {
        **reasons,
        "title": "Reason",
        "description": "Why (the policy's reasons).",
    }
    application["category"] = {"anyOf": [categories, {"type": "null"}], "title": "Category"}
    schemas["OrderLineIn"]["properties"]["category"] = {**categories, "title": "Category"}
    schemas["FireIn"]["properties"]["trigger"] = {
        "type": "string",
        "enum": list(TRIGGERS),
        "title": "Trigger",
        "description": "docs/triggers.md lists who fires each, from which states, with what data.",
    }
    hours = vocabulary.max_deadline_extension.total_seconds() / 3600
    schemas["ExtendIn"]["properties"]["hours"]["maximum"] = hours


#: Text without NUL characters, which the body guard refuses (PostgreSQL cannot store them).
NO_NUL = "^[^\\u0000]*$"


def _no_nul_characters(document: dict[str, Any]) -> None:
    """Every free text of a request body (a string without a pattern, enum or format of its
    own) declares that it has no NUL character, so a client (or a fuzzer) knows it before the
    422. Responses are left alone: a problem may quote what the client sent."""
    schemas = document["components"]["schemas"]
    bodies = [
        operation["requestBody"]
        for item in document["paths"].values()
        for operation in item.values()
        if "requestBody" in operation
    ]
    stack: list[Any] = bodies
    seen: set[str] = set()
    while stack:
        node = stack.pop()
        if isinstance(node, list):
            stack.extend(node)
            continue
        if not isinstance(node, dict):
            continue
        reference = node.get("$ref")
        if isinstance(reference, str):
            name = reference.rsplit("/", 1)[-1]
            if name not in seen:
                seen.add(name)
                stack.append(schemas[name])
            continue
        free = not {"pattern", "enum", "format", "const"} & node.keys()
        if node.get("type") == "string" and free:
            node["pattern"] = NO_NUL
        stack.extend(value for key, value in node.items() if key not in ("enum", "examples"))


def openapi_document() -> dict[str, Any]:
    """The OpenAPI document of the default configuration, built without a database
    (docs/openapi.json)."""
    return _build(Vocabulary.of(load_policy(), MAX_DEADLINE_EXTENSION)).openapi()
