"""API tokens may expire, and remember when they were last used.

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-07

``api_tokens.expires_at``: a token created with ``aftersales tokens create --expires-in 30d``
answers 401 ``token-expired`` from then on (null: never expires, as every token before).
``api_tokens.last_used_at``: when a request last authenticated with it, written at most once a
minute per token (not a write per request), so ``tokens list`` shows which tokens are idle.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0009"
down_revision: str | Sequence[str] | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("api_tokens") as batch:
        batch.add_column(sa.Column("expires_at", sa.DateTime(timezone=True), nullable=True))
        batch.add_column(sa.Column("last_used_at", sa.DateTime(timezone=True), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("api_tokens") as batch:
        batch.drop_column("last_used_at")
        batch.drop_column("expires_at")
