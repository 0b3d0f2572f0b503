"""The transition log records each transition's source and refuses UPDATE and DELETE itself;
a dead letter records who replayed or discarded it, and why; an idempotency key is one call's
on whichever case.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-07

``transitions.source`` is the channel a transition came through (``cli``, ``api token #7``,
``event sf-express/E1``, ``timer``, ``worker``): the actor says who acted, the source how it
reached us (issue 13: an event acting for a merchant was logged as the merchant, its producer
only in the idempotency key). Earlier rows get what their key tells: ``event:SOURCE:ID`` becomes
``event SOURCE:ID``, ``timer-N`` becomes ``timer``; the others stay null (unknown).

The log was append-only by convention. Now the database refuses it too: a ``BEFORE UPDATE OR
DELETE`` trigger per row on PostgreSQL and SQLite (and ``BEFORE TRUNCATE`` on PostgreSQL), so no
code path, script or console session rewrites history. Dropping the trigger takes a migration:
a deliberate, reviewed act.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0008"
down_revision: str | Sequence[str] | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

#: The message both databases raise; tests look for it.
REFUSAL = "the transition log is append-only"

_PG_UP = f"""
CREATE FUNCTION transitions_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION '{REFUSAL}: % refused', TG_OP USING ERRCODE = 'restrict_violation';
END
$$;
CREATE TRIGGER transitions_no_update_or_delete BEFORE UPDATE OR DELETE ON transitions
    FOR EACH ROW EXECUTE FUNCTION transitions_append_only();
CREATE TRIGGER transitions_no_truncate BEFORE TRUNCATE ON transitions
    FOR EACH STATEMENT EXECUTE FUNCTION transitions_append_only();
"""
_PG_DOWN = """
DROP TRIGGER transitions_no_truncate ON transitions;
DROP TRIGGER transitions_no_update_or_delete ON transitions;
DROP FUNCTION transitions_append_only();
"""
_SQLITE_UP = [
    f"""CREATE TRIGGER transitions_no_{op_name.lower()} BEFORE {op_name} ON transitions
    BEGIN SELECT RAISE(ABORT, '{REFUSAL}: {op_name} refused'); END"""
    for op_name in ("UPDATE", "DELETE")
]
_SQLITE_DOWN = ["DROP TRIGGER transitions_no_update", "DROP TRIGGER transitions_no_delete"]


def upgrade() -> None:
    op.add_column("transitions", sa.Column("source", sa.String(), nullable=True))
    op.add_column("dead_letters", sa.Column("resolved_by", sa.String(), nullable=True))
    op.add_column("dead_letters", sa.Column("resolution", sa.String(), nullable=True))
    # A key is one call's: reused on another case (a CLI key given to another command), the
    # call is refused instead of running as a new one. Keys were already unique per case, and
    # the API's are per token; a database where a person reused a key on two cases keeps the
    # older use (the newer one's row only guards against a replay that cannot happen now).
    op.execute(
        "DELETE FROM idempotency_keys WHERE EXISTS (SELECT 1 FROM idempotency_keys AS older "
        "WHERE older.key = idempotency_keys.key AND older.case_id < idempotency_keys.case_id)"
    )
    op.create_index("uq_idempotency_keys_key", "idempotency_keys", ["key"], unique=True)
    # Before the trigger: the last update the log takes.
    op.execute(
        "UPDATE transitions SET source = 'event ' || substr(idempotency_key, 7) "
        "WHERE idempotency_key LIKE 'event:%'"
    )
    op.execute("UPDATE transitions SET source = 'timer' WHERE idempotency_key LIKE 'timer-%'")
    if op.get_bind().dialect.name == "postgresql":
        op.execute(_PG_UP)
    else:
        for statement in _SQLITE_UP:
            op.execute(statement)


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute(_PG_DOWN)
    else:
        for statement in _SQLITE_DOWN:
            op.execute(statement)
    op.drop_index("uq_idempotency_keys_key", table_name="idempotency_keys")
    with op.batch_alter_table("dead_letters") as batch:
        batch.drop_column("resolution")
        batch.drop_column("resolved_by")
    with op.batch_alter_table("transitions") as batch:
        batch.drop_column("source")
