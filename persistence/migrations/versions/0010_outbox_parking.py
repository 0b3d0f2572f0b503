"""Outbox rows whose consumer keeps failing are parked; operators' retries are kept; the workers
count their tasks in ``task_stats``.

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-07

``outbox.parked_at``: the relay stopped publishing the row after ``AFTERSALES_OUTBOX_MAX_ATTEMPTS``
publishes that no consumer completed (it was published again every redelivery window, forever).
A parked row leaves the relay's two reads, so their partial indexes (migration 0006) and the
pending one now exclude it; ``ix_outbox_parked_id`` holds the parked rows for ``aftersales outbox
parked``. ``outbox_retries`` records each ``aftersales outbox retry``: who, when, why, and what
the row had been through. ``task_stats`` holds the task counts and duration buckets that worker
processes add for ``/metrics`` (docs/workers.md, "Monitoring").
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0010"
down_revision: str | Sequence[str] | None = "0009"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")

PENDING_BEFORE = sa.text("completed_at IS NULL")
IN_FLIGHT_BEFORE = sa.text("completed_at IS NULL AND published_at IS NOT NULL")
PENDING = sa.text("completed_at IS NULL AND parked_at IS NULL")
IN_FLIGHT = sa.text("completed_at IS NULL AND parked_at IS NULL AND published_at IS NOT NULL")
PARKED = sa.text("completed_at IS NULL AND parked_at IS NOT NULL")


def _time() -> sa.DateTime:
    return sa.DateTime(timezone=True)


def _partial(name: str, column: str, where: sa.TextClause) -> None:
    op.create_index(name, "outbox", [column], sqlite_where=where, postgresql_where=where)


def upgrade() -> None:
    op.add_column("outbox", sa.Column("parked_at", _time(), nullable=True))
    op.drop_index("ix_outbox_pending_id", table_name="outbox")
    op.drop_index("ix_outbox_in_flight_published_at", table_name="outbox")
    _partial("ix_outbox_pending_id", "id", PENDING)
    _partial("ix_outbox_in_flight_published_at", "published_at", IN_FLIGHT)
    _partial("ix_outbox_parked_id", "id", PARKED)
    op.create_table(
        "outbox_retries",
        sa.Column("id", ID, primary_key=True),
        sa.Column("outbox_id", sa.BigInteger(), nullable=False),
        sa.Column("retried_by", sa.String(), nullable=False),
        sa.Column("retried_at", _time(), nullable=False),
        sa.Column("reason", sa.String(), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("parked_at", _time(), nullable=False),
    )
    op.create_index("ix_outbox_retries_outbox_id", "outbox_retries", ["outbox_id"])
    op.create_table(
        "task_stats",
        sa.Column("task", sa.String(), primary_key=True),
        sa.Column("outcome", sa.String(), primary_key=True),
        sa.Column("le_ms", sa.BigInteger(), primary_key=True),
        sa.Column("count", sa.BigInteger(), nullable=False),
        sa.Column("seconds_sum", sa.Float(), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("task_stats")
    op.drop_index("ix_outbox_retries_outbox_id", table_name="outbox_retries")
    op.drop_table("outbox_retries")
    op.drop_index("ix_outbox_parked_id", table_name="outbox")
    op.drop_index("ix_outbox_in_flight_published_at", table_name="outbox")
    op.drop_index("ix_outbox_pending_id", table_name="outbox")
    # Parked rows become pending again: the relay publishes them once more, as before 0010.
    _partial("ix_outbox_in_flight_published_at", "published_at", IN_FLIGHT_BEFORE)
    _partial("ix_outbox_pending_id", "id", PENDING_BEFORE)
    op.drop_column("outbox", "parked_at")
