"""Indexes of the case queue (issue 16): the live deadlines by due time, cases by submission
time and by merchant and state, the disputed cases, and the timers of a case.

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-07

``GET /cases?overdue=true&sort=deadline`` reads the live timers in due-time order and stops at
the page (docs/adr/0011-case-queue-indexes.md: 0.30 ms in the database with 1,000,000 cases,
198 ms without). Built inside the migration's transaction, as the earlier index migrations.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0011"
down_revision: str | Sequence[str] | None = "0010"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

LIVE_TIMER = sa.text("status IN ('pending', 'claimed')")
DISPUTED = sa.text("to_state = 'disputed'")


def upgrade() -> None:
    op.create_index(
        "ix_timers_live_due_at_case_id",
        "timers",
        ["due_at", "case_id"],
        sqlite_where=LIVE_TIMER,
        postgresql_where=LIVE_TIMER,
    )
    op.create_index("ix_timers_case_id", "timers", ["case_id"])
    op.create_index("ix_cases_created_at_id", "cases", ["created_at", "id"])
    op.create_index("ix_cases_merchant_id_state_id", "cases", ["merchant_id", "state", "id"])
    op.create_index(
        "ix_transitions_disputed_case_id",
        "transitions",
        ["case_id"],
        sqlite_where=DISPUTED,
        postgresql_where=DISPUTED,
    )


def downgrade() -> None:
    op.drop_index("ix_transitions_disputed_case_id", table_name="transitions")
    op.drop_index("ix_cases_merchant_id_state_id", table_name="cases")
    op.drop_index("ix_cases_created_at_id", table_name="cases")
    op.drop_index("ix_timers_case_id", table_name="timers")
    op.drop_index("ix_timers_live_due_at_case_id", table_name="timers")
