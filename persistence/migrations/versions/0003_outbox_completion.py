"""Outbox completion: consumers mark the rows they finished, the relay republishes the others.

Revision ID: 0003
Revises: 0002
Create Date: 2025-03-01

- ``outbox.completed_at``: when a consumer finished the row; rows published before this revision
  count as completed (republishing the whole history would flood the workers).
- ``ix_outbox_pending_id`` (partial, ``completed_at IS NULL``) replaces
  ``ix_outbox_published_at_id``. Types are spelled out, as in 0001, so the schema stays the same
  whatever later code does to ``persistence.types``.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | Sequence[str] | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

PENDING = sa.text("completed_at IS NULL")


def upgrade() -> None:
    # Plain ADD COLUMN on both backends (SQLite adds a nullable column in place).
    op.add_column("outbox", sa.Column("completed_at", sa.DateTime(timezone=True), nullable=True))
    op.execute("UPDATE outbox SET completed_at = published_at WHERE published_at IS NOT NULL")
    op.drop_index("ix_outbox_published_at_id", table_name="outbox")
    op.create_index(
        "ix_outbox_pending_id",
        "outbox",
        ["id"],
        sqlite_where=PENDING,
        postgresql_where=PENDING,
    )


def downgrade() -> None:
    op.drop_index("ix_outbox_pending_id", table_name="outbox")
    op.create_index("ix_outbox_published_at_id", "outbox", ["published_at", "id"])
    # SQLite >= 3.35 drops an unindexed, unconstrained column in place.
    op.drop_column("outbox", "completed_at")
