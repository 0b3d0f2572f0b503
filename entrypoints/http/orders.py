"""``/orders``: the order system (or an admin) imports orders of record; their parties read them.

An order of record is what a case's facts are copied from (what was paid, the lines, prices,
categories, gifts, the delivery time), so only the order system's producer token (a source of
kind ``orders``) and admins write them. Its buyer, its merchant and admins read it with its
per-line account; to anyone else it does not exist (404, as for a missing order), so an order
id tells a stranger nothing.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Body, Path, Request
from fastapi.responses import Response
from pydantic import ValidationError

from config.sources import SourceKind
from entrypoints import views
from entrypoints.http.auth import Authenticated, Principal
from entrypoints.http.cases import IdempotencyKey
from entrypoints.http.context import api_of, idempotent, json_response
from entrypoints.http.problems import ProblemError, responses
from entrypoints.http.schemas import OrderAccountOut, OrderImportOut
from entrypoints.http.scopes import TokenRole
from workflow.errors import NotFound
from workflow.model import Actor
from workflow.orders import OrderIn
from workflow.states import Role

router = APIRouter(prefix="/orders", tags=["orders"])

OrderId = Annotated[
    str,
    Path(
        min_length=1,
        max_length=64,
        pattern=r"^[A-Za-z0-9_.:\-]+$",
        description="The order's id in the order system.",
    ),
]

#: The request body of ``POST /orders`` in the OpenAPI document: a batch of order documents.
ORDERS_BODY_SCHEMA: dict[str, Any] = {
    "type": "array",
    "items": {"$ref": "#/components/schemas/OrderOfRecord"},
    "minItems": 1,
}


def importer(request: Request, principal: Principal) -> Actor:
    """Who imports: an admin, or a producer of a source of kind ``orders``; else 403."""
    if principal.role is TokenRole.ADMIN:
        return principal.actor()
    if principal.role is TokenRole.PRODUCER and principal.subject is not None:
        kind = api_of(request).events.sources.kind_of(principal.subject)
        if kind is SourceKind.ORDERS:
            return Actor(Role.SYSTEM, f"orders:{principal.subject}")
        what = f"a {kind.value} source" if kind is not None else "not a configured source"
        raise ProblemError(
            "forbidden",
            f"{principal.subject} is {what}; only the order system (a source of kind "
            f"{SourceKind.ORDERS.value}) imports orders",
        )
    raise ProblemError(
        "forbidden", f"orders are imported by the order system or an admin, not a {principal.role}"
    )


def _check_documents(body: list[Any], categories: frozenset[str]) -> None:
    """422 naming the first field of a document that is not an order at all (as for events:
    the sender is online to fix it), a category the policy does not know included (the
    document declares them); orders that parse but cannot be imported (a changed price) are
    refused one by one in the 200's ``refused``."""
    for index, document in enumerate(body, 1):
        where = f"body.{index - 1}"
        if not isinstance(document, dict):
            raise ProblemError("invalid-input", f"{where}: an order is a JSON object", field=where)
        try:
            order = OrderIn.model_validate(document)
        except ValidationError as error:
            first = error.errors()[0]
            location = ".".join([where, *(str(part) for part in first["loc"])])
            raise ProblemError(
                "invalid-input", f"{location}: {first['msg']}", field=location
            ) from None
        for number, line in enumerate(order.lines):
            if line.category not in categories:
                location = f"{where}.lines.{number}.category"
                known = ", ".join(sorted(categories))
                raise ProblemError(
                    "invalid-input",
                    f"{location}: unknown category {line.category!r} (one of {known})",
                    field=location,
                )


@router.post(
    "",
    response_model=OrderImportOut,
    summary="Import orders of record",
    description="A batch of orders (docs/orders.md), upserted by `order_id`. A document that is "
    "not an order (a missing field, a naive time, a category the policy does not know) "
    "refuses the whole batch with 422 naming the field, before any is imported. What was paid "
    "and ordered never changes after the first import: a later document may add "
    "`delivered_at`; one that changes anything else is refused, one by one: 200 with the "
    "counts and the refusals (`index` from 1). Admins and producer tokens of a source of kind "
    "`orders` only.",
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": ORDERS_BODY_SCHEMA}},
        }
    },
    responses=responses(400, 401, 403, 409, 413, 415, 422, 429, 503),
)
def import_orders(
    request: Request,
    principal: Authenticated,
    body: Annotated[Any, Body(include_in_schema=False)] = None,
    idempotency_key: IdempotencyKey = None,
) -> Response:
    actor = importer(request, principal)
    api = api_of(request)
    if not isinstance(body, list) or not body:
        raise ProblemError("invalid-input", "send a non-empty JSON array of orders", field="body")
    if len(body) > api.settings.max_batch:
        raise ProblemError(
            "invalid-input",
            f"at most {api.settings.max_batch} orders per request, not {len(body)}",
            field="body",
        )

    _check_documents(body, api.cases.policy.categories)

    def action() -> Response:
        result = api.orders.import_orders(body, actor)
        return json_response(OrderImportOut, views.import_json(result))

    return idempotent(request, principal, idempotency_key, action)


@router.get(
    "/{order_id}",
    response_model=OrderAccountOut,
    summary="Get an order of record and its account",
    description="The order as imported, and per line the quantity under open cases, the "
    "quantity and amount refunded; for the order what was paid, refunded and is still "
    "refundable. Its buyer, its merchant and admins; anyone else gets 404, as for an order "
    "that does not exist.",
    responses=responses(401, 404, 422, 429, 503),
)
def get_order(request: Request, order_id: OrderId, principal: Authenticated) -> Response:
    if principal.role is TokenRole.PRODUCER:
        raise NotFound(f"no order {order_id}")
    account = api_of(request).orders.account(order_id, principal.actor())
    return json_response(OrderAccountOut, views.order_account_json(account))
