"""The orders of record: ``workflow.ports.OrderStore``."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy.exc import IntegrityError

from persistence.stores.base import SqlStore
from workflow.errors import Conflict
from workflow.model import Payment
from workflow.orders import Order, OrderGift, OrderLine


class SqlOrderStore(SqlStore):
    def get(self, order_id: str) -> Order | None:
        row = self._run(self._uow.statements.select_order.first, {"order_id": order_id})
        return None if row is None else order_from_row(row)

    def lock(self, order_id: str) -> Order | None:
        row = self._run(self._uow.statements.lock_order_row.first, {"order_id": order_id})
        return None if row is None else order_from_row(row)

    def put(self, order: Order, at: datetime) -> None:
        sql = self._uow.statements
        changed = self._run(
            sql.set_order_delivered.execute,
            {
                "where_order_id": order.order_id,
                "delivered_at": order.delivered_at,
                "updated_at": at,
            },
        )
        if not changed:
            try:
                self._run(sql.insert_order.execute, order_values(order, at))
            except IntegrityError as exc:
                # A concurrent import of the same new order committed first (nothing to lock
                # before the row exists): the caller imports again and finds it.
                raise Conflict(f"order {order.order_id} was imported meanwhile") from exc


def order_values(order: Order, at: datetime) -> dict[str, Any]:
    return {
        "order_id": order.order_id,
        "buyer_id": order.buyer_id,
        "merchant_id": order.merchant_id,
        "payment_channel": order.payment.channel,
        "paid_amount": order.payment.amount,
        "paid_at": order.payment.paid_at,
        "delivered_at": order.delivered_at,
        "lines": [
            {
                "sku": line.sku,
                "quantity": line.quantity,
                "unit_price": line.unit_price,
                "category": line.category,
            }
            for line in order.lines
        ],
        "gifts": [{"sku": g.sku, "quantity": g.quantity, "value": g.value} for g in order.gifts],
        "migrated": order.migrated,
        "imported_at": at,
        "updated_at": at,
    }


def order_from_row(row: Sequence[Any]) -> Order:
    (
        order_id, buyer_id, merchant_id, channel, paid_amount, paid_at, delivered_at,
        lines, gifts, migrated, _imported_at, _updated_at,
    ) = row  # fmt: skip
    return Order(
        order_id=order_id,
        buyer_id=buyer_id,
        merchant_id=merchant_id,
        payment=Payment(channel, int(paid_amount), paid_at),
        lines=tuple(
            OrderLine(line["sku"], line["quantity"], line["unit_price"], line["category"])
            for line in lines
        ),
        gifts=tuple(OrderGift(g["sku"], g["quantity"], g["value"]) for g in gifts),
        delivered_at=delivered_at,
        migrated=bool(migrated),
    )
