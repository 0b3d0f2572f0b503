"""Timer claims read in index order: ``ix_timers_status_due_at_id`` replaces
``ix_timers_status_due_at``.

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-26

With ``id`` in the index, ``ORDER BY due_at, id LIMIT batch`` is a range scan that stops after
the batch, even when many timers share one due instant (BENCHMARKS.md section 3). The build holds
off writes to ``timers``; a deployment that cannot pause them creates the index ``CONCURRENTLY``
before upgrading, and this revision then only drops the old one.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | Sequence[str] | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

NEW = "ix_timers_status_due_at_id"
OLD = "ix_timers_status_due_at"


def upgrade() -> None:
    existing = {index["name"] for index in sa.inspect(op.get_bind()).get_indexes("timers")}
    if NEW not in existing:
        op.create_index(NEW, "timers", ["status", "due_at", "id"])
    op.drop_index(OLD, table_name="timers")


def downgrade() -> None:
    op.create_index(OLD, "timers", ["status", "due_at"])
    op.drop_index(NEW, table_name="timers")
