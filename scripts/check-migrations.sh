#!/usr/bin/env bash
# `make test`'s migration gate: the plain `alembic` command, as an operator runs it, upgrades a
# fresh SQLite database to head and `alembic check` finds nothing between the tables the code
# declares (persistence/tables.py) and what the migrations built. A missing or edited migration
# fails here, listing what differs. (PostgreSQL gets the same check in
# tests/integration/test_alembic_command.py when AFTERSALES_TEST_POSTGRES_URL is set.)
set -euo pipefail
cd "$(dirname "$0")/.."
ALEMBIC=${ALEMBIC:-.venv/bin/alembic}

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
export AFTERSALES_DATABASE_URL="sqlite:///$work/schema.db"

# Alembic logs each migration it runs; shown only when something fails.
if ! "$ALEMBIC" upgrade head >"$work/upgrade.log" 2>&1; then
  cat "$work/upgrade.log" >&2
  echo "check-migrations: alembic upgrade head failed on a fresh SQLite database" >&2
  exit 1
fi
if ! "$ALEMBIC" check >"$work/check.log" 2>&1; then
  grep -v 'alembic.runtime.plugins\|Context impl\|transactional DDL' "$work/check.log" >&2
  echo "check-migrations: the migrations do not build what persistence/tables.py declares;" \
    "add a migration (alembic revision --autogenerate -m WHAT --rev-id 00NN)" >&2
  exit 1
fi
echo "check-migrations: alembic check: migrations and tables agree ($("$ALEMBIC" heads 2>/dev/null | cut -d' ' -f1))"
