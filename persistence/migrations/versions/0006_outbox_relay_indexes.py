"""The relay's reads get indexes of their own: ``ix_outbox_unpublished_id`` (rows never
published, by id) and ``ix_outbox_in_flight_published_at`` (rows published and not completed,
by publish time).

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-26

The relay publishes rows never published and rows published before its redelivery window and
still not completed. Through ``ix_outbox_pending_id`` alone, one read did both: it walked the
pending rows in id order past every row already published and still in flight. After 100,000
timers fired at once their notices wait in the broker, published and in flight, and each relay
read all of them to find the new rows (bench/timers_scale.py, BENCHMARKS.md section 3). Now each
kind has a partial index, and the relay reads them in two statements.

Both indexes are partial (pending rows only) and built inside the migration's transaction; the
outbox holds few pending rows, so the build is short.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | Sequence[str] | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

UNPUBLISHED = sa.text("completed_at IS NULL AND published_at IS NULL")
IN_FLIGHT = sa.text("completed_at IS NULL AND published_at IS NOT NULL")


def upgrade() -> None:
    op.create_index(
        "ix_outbox_unpublished_id",
        "outbox",
        ["id"],
        sqlite_where=UNPUBLISHED,
        postgresql_where=UNPUBLISHED,
    )
    op.create_index(
        "ix_outbox_in_flight_published_at",
        "outbox",
        ["published_at"],
        sqlite_where=IN_FLIGHT,
        postgresql_where=IN_FLIGHT,
    )


def downgrade() -> None:
    op.drop_index("ix_outbox_in_flight_published_at", table_name="outbox")
    op.drop_index("ix_outbox_unpublished_id", table_name="outbox")
