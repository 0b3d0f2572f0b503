"""Importing orders of record and reading their accounts: one unit of work per call.

Only the order system (acting as the system) or an admin imports orders. An account is shown to
an admin, the order's merchant and the order's buyer; anyone else is told the order does not
exist, exactly as for an order that does not.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from config.policy import Policy
from workflow.clock import Clock
from workflow.errors import Forbidden, InvalidInput, NotFound
from workflow.model import Actor
from workflow.orders import (
    OrderAccount,
    account,
    merge_import,
    parse_order,
)
from workflow.ports import UnitOfWorkFactory
from workflow.states import Role

#: Most orders one import call takes (the CLI and the API send bigger files in such batches).
MAX_IMPORT_BATCH = 1000
#: Who writes orders of record: the order system's events and import run as the system.
IMPORTERS = frozenset({Role.ADMIN, Role.SYSTEM})


@dataclass(frozen=True)
class Refusal:
    """An order document the import refused, and why (the field at fault when known)."""

    index: int
    order_id: str | None
    message: str
    field: str | None = None

    def to_document(self) -> dict[str, Any]:
        return {
            "index": self.index,
            "order_id": self.order_id,
            "field": self.field,
            "message": self.message,
        }


@dataclass(frozen=True)
class ImportResult:
    #: New orders stored.
    imported: int = 0
    #: Stored orders whose delivery time was recorded.
    updated: int = 0
    #: Documents that repeated a stored order as it is.
    unchanged: int = 0
    refused: list[Refusal] = field(default_factory=list)

    def to_document(self) -> dict[str, Any]:
        return {
            "imported": self.imported,
            "updated": self.updated,
            "unchanged": self.unchanged,
            "refused": [refusal.to_document() for refusal in self.refused],
        }


class OrderService:
    def __init__(self, uow_factory: UnitOfWorkFactory, clock: Clock, policy: Policy) -> None:
        self._uow = uow_factory
        self.clock = clock
        self.policy = policy

    def import_orders(self, documents: Sequence[Any], actor: Actor) -> ImportResult:
        """Upsert orders by ``order_id`` in one transaction; a refused document costs only
        itself (what was paid and ordered never changes; a delivery time may be added)."""
        if actor.role not in IMPORTERS:
            raise Forbidden("only the order system or an admin imports orders")
        if len(documents) > MAX_IMPORT_BATCH:
            raise InvalidInput(f"at most {MAX_IMPORT_BATCH} orders per import", "orders")
        imported = updated = unchanged = 0
        refused: list[Refusal] = []
        now = self.clock.now()
        with self._uow() as uow:
            for index, document in enumerate(documents):
                order_id = document.get("order_id") if isinstance(document, dict) else None
                try:
                    incoming = parse_order(document, self.policy)
                    stored = uow.orders.lock(incoming.order_id)
                    merged = merge_import(stored, incoming)
                    if merged is not None:
                        uow.orders.put(merged, now)
                except InvalidInput as error:
                    shown = order_id if isinstance(order_id, str) else None
                    refused.append(Refusal(index, shown, str(error), error.field))
                    continue
                if merged is None:
                    unchanged += 1
                elif stored is None:
                    imported += 1
                else:
                    updated += 1
            uow.commit()
        return ImportResult(imported, updated, unchanged, refused)

    def account(self, order_id: str, actor: Actor) -> OrderAccount:
        """The order with its per-line account (``orders.account``)."""
        with self._uow() as uow:
            order = uow.orders.get(order_id)
            if order is None or not _may_read(actor, order.buyer_id, order.merchant_id):
                raise NotFound(f"no order {order_id}")
            cases = uow.cases.of_orders([order_id]).get(order_id, [])
            return account(order, cases)


def _may_read(actor: Actor, buyer_id: str, merchant_id: str) -> bool:
    if actor.role in (Role.ADMIN, Role.SYSTEM):
        return True
    if actor.role is Role.MERCHANT:
        return actor.id == merchant_id
    if actor.role is Role.BUYER:
        return actor.id == buyer_id
    return False
