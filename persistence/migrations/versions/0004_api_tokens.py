"""HTTP API: bearer tokens (stored hashed) and the responses replayed for idempotency keys.

Revision ID: 0004
Revises: 0003
Create Date: 2025-04-01

- ``api_tokens``: one row per token; ``token_hash`` is the hex SHA-256 of the secret, which is
  shown once and never stored. ``revoked_at`` set means the token no longer authenticates.
- ``api_idempotency``: the first response to a POST with an ``Idempotency-Key``, per (token,
  key, method, path); ``ix_api_idempotency_created_at`` serves the pruning of old rows.

Types are spelled out here, as in 0001, so this revision keeps creating the same schema whatever
later code does to ``persistence.types``.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0004"
down_revision: str | Sequence[str] | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
JSON = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")


def _time() -> sa.DateTime:
    return sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "api_tokens",
        sa.Column("id", ID, primary_key=True),
        sa.Column("token_hash", sa.String(), nullable=False),
        sa.Column("role", sa.String(), nullable=False),
        sa.Column("subject", sa.String(), nullable=True),
        sa.Column("name", sa.String(), nullable=True),
        sa.Column("created_at", _time(), nullable=False),
        sa.Column("revoked_at", _time(), nullable=True),
        sa.UniqueConstraint("token_hash", name="uq_api_tokens_token_hash"),
    )
    op.create_table(
        "api_idempotency",
        sa.Column(
            "token_id",
            sa.BigInteger(),
            sa.ForeignKey("api_tokens.id", name="fk_api_idempotency_token_id"),
            primary_key=True,
        ),
        sa.Column("key", sa.String(), primary_key=True),
        sa.Column("method", sa.String(), primary_key=True),
        sa.Column("path", sa.String(), primary_key=True),
        sa.Column("fingerprint", sa.String(), nullable=False),
        sa.Column("created_at", _time(), nullable=False),
        sa.Column("status", sa.Integer(), nullable=True),
        sa.Column("headers", JSON, nullable=False),
        sa.Column("body", sa.Text(), nullable=True),
    )
    op.create_index("ix_api_idempotency_created_at", "api_idempotency", ["created_at"])


def downgrade() -> None:
    op.drop_index("ix_api_idempotency_created_at", table_name="api_idempotency")
    op.drop_table("api_idempotency")
    op.drop_table("api_tokens")
