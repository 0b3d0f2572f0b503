"""Runtime support: parcel lookup columns on cases, the fired-timer index, dead letters.

Revision ID: 0002
Revises: 0001
Create Date: 2025-02-01

- ``cases.return_tracking_no`` / ``outbound_tracking_no`` (indexed): copies of the tracking
  numbers in ``details``, so a carrier event finds its case by index; filled here.
- ``ix_timers_fired_at``: the lateness report reads the timers fired since a time.
- ``dead_letters``: inbound events that could not apply, one row per (source, event_id).
Types are spelled out, as in 0001, so the schema stays the same whatever later code does.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0002"
down_revision: str | Sequence[str] | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
JSON = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")
TRACKING_COLUMNS = ("return_tracking_no", "outbound_tracking_no")


def _time() -> sa.DateTime:
    return sa.DateTime(timezone=True)


def upgrade() -> None:
    # Plain ADD COLUMN on both backends (SQLite adds a nullable column in place).
    for column in TRACKING_COLUMNS:
        op.add_column("cases", sa.Column(column, sa.String(), nullable=True))
    _backfill_tracking_numbers()
    for column in TRACKING_COLUMNS:
        op.create_index(f"ix_cases_{column}", "cases", [column])

    op.create_index("ix_timers_fired_at", "timers", ["fired_at"])

    op.create_table(
        "dead_letters",
        sa.Column("id", ID, primary_key=True),
        sa.Column("source", sa.String(), nullable=False),
        sa.Column("event_id", sa.String(), nullable=True),
        sa.Column("envelope", JSON, nullable=False),
        sa.Column("reason", sa.String(), nullable=False),
        sa.Column("code", sa.String(), nullable=False),
        sa.Column("received_at", _time(), nullable=False),
        sa.Column("status", sa.String(), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("resolved_at", _time(), nullable=True),
        sa.UniqueConstraint("source", "event_id", name="uq_dead_letters_source_event_id"),
    )
    op.create_index("ix_dead_letters_status_id", "dead_letters", ["status", "id"])


def _backfill_tracking_numbers() -> None:
    dialect = op.get_bind().dialect.name
    for column in TRACKING_COLUMNS:
        if dialect == "postgresql":
            value = f"details ->> '{column}'"
        else:
            # json_extract answers the JSON value; the numbers are strings, but keep it text.
            value = f"CAST(json_extract(details, '$.{column}') AS TEXT)"
        op.execute(f"UPDATE cases SET {column} = {value} WHERE {value} IS NOT NULL")


def downgrade() -> None:
    op.drop_index("ix_dead_letters_status_id", table_name="dead_letters")
    op.drop_table("dead_letters")
    op.drop_index("ix_timers_fired_at", table_name="timers")
    for column in reversed(TRACKING_COLUMNS):
        op.drop_index(f"ix_cases_{column}", table_name="cases")
        # SQLite >= 3.35 drops an unindexed, unconstrained column in place.
        op.drop_column("cases", column)
