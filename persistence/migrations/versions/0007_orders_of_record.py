"""Orders of record: the ``orders`` table, built for the existing cases' orders.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-07

Until now an application stated its order (payment, prices, category, delivery, gifts) and the
case kept that snapshot. From now on the facts come from an order of record imported from the
order system (issue 13). The orders the existing cases name get one, built from their snapshots
and marked ``migrated``: the header (buyer, merchant, payment) and the delivery time from the
order's first case, each sku's line from the first case that names it, with the largest
quantity any case stated. Lines and gifts are JSON documents, read and written with their order.

The one-open-case-per-item claim (``open_case_items``) gives way to per-unit accounting under
the order's row lock: a case for 1 of 3 units leaves 2 claimable. Downgrading rebuilds the claims
of the open cases (an open case per item, as before).
"""

from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0007"
down_revision: str | Sequence[str] | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

JSON = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")
TERMINAL = ("refunded", "exchanged", "repaired", "cancelled", "closed")
CASES = sa.table(
    "cases",
    sa.column("id", sa.BigInteger()),
    sa.column("state", sa.String()),
    sa.column("order_id", sa.String()),
    sa.column("buyer_id", sa.String()),
    sa.column("merchant_id", sa.String()),
    sa.column("category", sa.String()),
    sa.column("payment_channel", sa.String()),
    sa.column("paid_amount", sa.BigInteger()),
    sa.column("paid_at", sa.DateTime(timezone=True)),
    sa.column("delivered_at", sa.DateTime(timezone=True)),
    sa.column("items", JSON),
    sa.column("gifts", JSON),
)


def _time() -> sa.DateTime:
    return sa.DateTime(timezone=True)


def upgrade() -> None:
    orders = op.create_table(
        "orders",
        sa.Column("order_id", sa.String(), primary_key=True),
        sa.Column("buyer_id", sa.String(), nullable=False),
        sa.Column("merchant_id", sa.String(), nullable=False),
        sa.Column("payment_channel", sa.String(), nullable=False),
        sa.Column("paid_amount", sa.BigInteger(), nullable=False),
        sa.Column("paid_at", _time(), nullable=False),
        sa.Column("delivered_at", _time(), nullable=True),
        sa.Column("lines", JSON, nullable=False),
        sa.Column("gifts", JSON, nullable=False),
        sa.Column("migrated", sa.Boolean(), nullable=False),
        sa.Column("imported_at", _time(), nullable=False),
        sa.Column("updated_at", _time(), nullable=False),
    )
    op.create_index("ix_orders_buyer_id", "orders", ["buyer_id"])
    op.create_index("ix_orders_merchant_id", "orders", ["merchant_id"])
    rows = _orders_from_cases(op.get_bind())
    if rows:
        op.bulk_insert(orders, rows)
    op.drop_index("ix_open_case_items_case_id", table_name="open_case_items")
    op.drop_table("open_case_items")


def _orders_from_cases(bind: sa.Connection) -> list[dict[str, Any]]:
    # SQLite keeps times as naive UTC text; written back the same way by bulk_insert.
    now = datetime.now(UTC)
    if bind.dialect.name == "sqlite":
        now = now.replace(tzinfo=None)
    built: dict[str, dict[str, Any]] = {}
    for case in bind.execute(sa.select(CASES).order_by(CASES.c.id)).mappings():
        order = built.get(case["order_id"])
        if order is None:
            order = built[case["order_id"]] = {
                "order_id": case["order_id"],
                "buyer_id": case["buyer_id"],
                "merchant_id": case["merchant_id"],
                "payment_channel": case["payment_channel"],
                "paid_amount": case["paid_amount"],
                "paid_at": case["paid_at"],
                "delivered_at": case["delivered_at"],
                "lines": [],
                "gifts": [],
                "migrated": True,
                "imported_at": now,
                "updated_at": now,
            }
        if order["delivered_at"] is None:
            order["delivered_at"] = case["delivered_at"]
        lines = {line["sku"]: line for line in order["lines"]}
        for item in case["items"] or []:
            line = lines.get(item["sku"])
            if line is None:
                order["lines"].append(
                    {
                        "sku": item["sku"],
                        "quantity": item["quantity"],
                        "unit_price": item["unit_price"],
                        "category": case["category"],
                    }
                )
            else:
                line["quantity"] = max(line["quantity"], item["quantity"])
        gifts = {gift["sku"] for gift in order["gifts"]}
        for gift in case["gifts"] or []:
            if gift["sku"] not in gifts:
                order["gifts"].append(dict(gift))
    return list(built.values())


def downgrade() -> None:
    op.create_table(
        "open_case_items",
        sa.Column("order_id", sa.String(), primary_key=True),
        sa.Column("sku", sa.String(), primary_key=True),
        sa.Column("case_id", sa.BigInteger(), nullable=False),
        sa.ForeignKeyConstraint(["case_id"], ["cases.id"], name="fk_open_case_items_case_id"),
    )
    op.create_index("ix_open_case_items_case_id", "open_case_items", ["case_id"])
    bind = op.get_bind()
    claims: dict[tuple[str, str], int] = {}
    open_cases = sa.select(CASES).where(CASES.c.state.not_in(TERMINAL)).order_by(CASES.c.id)
    for case in bind.execute(open_cases).mappings():
        for item in case["items"] or []:
            claims.setdefault((case["order_id"], item["sku"]), case["id"])
    if claims:
        claim_table = sa.table(
            "open_case_items",
            sa.column("order_id", sa.String()),
            sa.column("sku", sa.String()),
            sa.column("case_id", sa.BigInteger()),
        )
        op.bulk_insert(
            claim_table,
            [{"order_id": o, "sku": s, "case_id": c} for (o, s), c in claims.items()],
        )
    op.drop_index("ix_orders_merchant_id", table_name="orders")
    op.drop_index("ix_orders_buyer_id", table_name="orders")
    op.drop_table("orders")
