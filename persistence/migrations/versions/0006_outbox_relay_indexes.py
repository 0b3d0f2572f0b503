"""The relay's reads get indexes of their own: ``ix_outbox_unpublished_id`` (rows never
published, by id) and ``ix_outbox_in_flight_published_at`` (published, not completed, by time).

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-26

Through ``ix_outbox_pending_id`` alone each relay read walked every row still in flight to find
the new ones (after 100,000 timers fired at once: BENCHMARKS.md section 3). Both indexes are
partial (pending rows only, few), built inside the migration's transaction.
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
