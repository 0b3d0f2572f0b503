"""Initial schema: cases, their transition log, timers, outbox and bookkeeping tables.

Revision ID: 0001
Revises:
Create Date: 2025-01-01

Types are spelled out here rather than imported from ``persistence.types`` so this revision keeps
creating the same schema whatever later code does to those helpers.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0001"
down_revision: str | Sequence[str] | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# INTEGER PRIMARY KEY is SQLite's auto-assigned 64-bit rowid; BIGSERIAL on PostgreSQL.
ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
JSON = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")
LIVE_TIMER = sa.text("status IN ('pending', 'claimed')")


def _time() -> sa.DateTime:
    return sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "cases",
        sa.Column("id", ID, primary_key=True),
        sa.Column("type", sa.String(), nullable=False),
        sa.Column("state", sa.String(), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("order_id", sa.String(), nullable=False),
        sa.Column("buyer_id", sa.String(), nullable=False),
        sa.Column("merchant_id", sa.String(), nullable=False),
        sa.Column("category", sa.String(), nullable=False),
        sa.Column("reason", sa.String(), nullable=False),
        sa.Column("description", sa.String(), nullable=False),
        sa.Column("payment_channel", sa.String(), nullable=False),
        sa.Column("paid_amount", sa.BigInteger(), nullable=False),
        sa.Column("paid_at", _time(), nullable=False),
        sa.Column("delivered_at", _time(), nullable=True),
        sa.Column("items", JSON, nullable=False),
        sa.Column("gifts", JSON, nullable=False),
        sa.Column("requested_amount", sa.BigInteger(), nullable=True),
        sa.Column("refund_amount", sa.BigInteger(), nullable=False),
        sa.Column("gift_deduction", sa.BigInteger(), nullable=False),
        sa.Column("refund_route", sa.String(), nullable=True),
        sa.Column("refund_attempts", sa.Integer(), nullable=False),
        sa.Column("refund_key", sa.String(), nullable=True),
        sa.Column("submission_key", sa.String(), nullable=True),
        sa.Column("details", JSON, nullable=False),
        sa.Column("created_at", _time(), nullable=False),
        sa.Column("updated_at", _time(), nullable=False),
        sa.UniqueConstraint("submission_key", name="uq_cases_submission_key"),
    )
    op.create_index("ix_cases_state", "cases", ["state"])
    op.create_index("ix_cases_merchant_id_id", "cases", ["merchant_id", "id"])
    op.create_index("ix_cases_buyer_id_id", "cases", ["buyer_id", "id"])
    op.create_index("ix_cases_order_id", "cases", ["order_id"])

    op.create_table(
        "transitions",
        sa.Column("id", ID, primary_key=True),
        sa.Column("case_id", sa.BigInteger(), nullable=False),
        sa.Column("seq", sa.Integer(), nullable=False),
        sa.Column("trigger", sa.String(), nullable=False),
        sa.Column("from_state", sa.String(), nullable=True),
        sa.Column("to_state", sa.String(), nullable=False),
        sa.Column("actor", sa.String(), nullable=False),
        sa.Column("reason", sa.String(), nullable=True),
        sa.Column("data", JSON, nullable=False),
        sa.Column("at", _time(), nullable=False),
        sa.Column("idempotency_key", sa.String(), nullable=True),
        sa.ForeignKeyConstraint(["case_id"], ["cases.id"], name="fk_transitions_case_id"),
        sa.UniqueConstraint("case_id", "seq", name="uq_transitions_case_id_seq"),
    )

    op.create_table(
        "idempotency_keys",
        sa.Column("case_id", sa.BigInteger(), nullable=False),
        sa.Column("key", sa.String(), nullable=False),
        sa.Column("first_seq", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("case_id", "key"),
        sa.ForeignKeyConstraint(["case_id"], ["cases.id"], name="fk_idempotency_keys_case_id"),
    )

    op.create_table(
        "timers",
        sa.Column("id", ID, primary_key=True),
        sa.Column("case_id", sa.BigInteger(), nullable=False),
        sa.Column("kind", sa.String(), nullable=False),
        sa.Column("trigger", sa.String(), nullable=False),
        sa.Column("state", sa.String(), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("due_at", _time(), nullable=False),
        sa.Column("status", sa.String(), nullable=False),
        sa.Column("created_at", _time(), nullable=False),
        sa.Column("claimed_at", _time(), nullable=True),
        sa.Column("claimed_by", sa.String(), nullable=True),
        sa.Column("fired_at", _time(), nullable=True),
        sa.Column("lateness_ms", sa.BigInteger(), nullable=True),
        sa.ForeignKeyConstraint(["case_id"], ["cases.id"], name="fk_timers_case_id"),
    )
    op.create_index("ix_timers_status_due_at", "timers", ["status", "due_at"])
    op.create_index(
        "uq_timers_live_case_id",
        "timers",
        ["case_id"],
        unique=True,
        sqlite_where=LIVE_TIMER,
        postgresql_where=LIVE_TIMER,
    )

    op.create_table(
        "outbox",
        sa.Column("id", ID, primary_key=True),
        sa.Column("topic", sa.String(), nullable=False),
        sa.Column("case_id", sa.BigInteger(), nullable=False),
        sa.Column("payload", JSON, nullable=False),
        sa.Column("created_at", _time(), nullable=False),
        sa.Column("published_at", _time(), nullable=True),
        sa.Column("attempts", sa.Integer(), nullable=False, server_default="0"),
    )
    op.create_index("ix_outbox_published_at_id", "outbox", ["published_at", "id"])

    op.create_table(
        "inbound_events",
        sa.Column("source", sa.String(), nullable=False),
        sa.Column("event_id", sa.String(), nullable=False),
        sa.Column("case_id", sa.BigInteger(), nullable=True),
        sa.Column("received_at", _time(), nullable=False),
        sa.PrimaryKeyConstraint("source", "event_id"),
    )

    op.create_table(
        "open_case_items",
        sa.Column("order_id", sa.String(), nullable=False),
        sa.Column("sku", sa.String(), nullable=False),
        sa.Column("case_id", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("order_id", "sku"),
        sa.ForeignKeyConstraint(["case_id"], ["cases.id"], name="fk_open_case_items_case_id"),
    )
    op.create_index("ix_open_case_items_case_id", "open_case_items", ["case_id"])


def downgrade() -> None:
    op.drop_table("open_case_items")
    op.drop_table("inbound_events")
    op.drop_table("outbox")
    op.drop_table("timers")
    op.drop_table("idempotency_keys")
    op.drop_table("transitions")
    op.drop_table("cases")
