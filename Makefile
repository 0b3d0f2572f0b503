# The two commands of the quick start: `make run` and `make test`. Each sets itself up.
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install run demo test lint typecheck check-migrations unit format clean lock

$(STAMP): pyproject.toml requirements.lock scripts/bootstrap-venv.sh \
		entrypoints/http/console/vendor/package-lock.json
	@bash scripts/bootstrap-venv.sh

install: $(STAMP)

## Runs the service's main job on the embedded defaults (SQLite, no server): starts `aftersales run`
## (worker + beat, the API on 127.0.0.1:$(PORT)) and drives the live demo through it (`aftersales
## demo` is the scripted one). Stops at once, saying so, when the port is taken: `make run PORT=8001`.
PORT ?= 8000
run: $(STAMP)
	$(BIN)/aftersales demo --live --port $(PORT)

demo: run

## Lint, format check, type check, `alembic check`, then the whole test suite. PostgreSQL tests
## run when AFTERSALES_TEST_POSTGRES_URL is set (.ci/run sets it and requires them).
test: $(STAMP) lint typecheck check-migrations
	$(BIN)/pytest -q

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/lint-imports

typecheck: $(STAMP)
	$(BIN)/mypy

## `alembic upgrade head` then `alembic check` on a fresh SQLite database: the migrations build
## exactly the tables persistence/tables.py declares.
check-migrations: $(STAMP)
	ALEMBIC=$(BIN)/alembic bash scripts/check-migrations.sh

unit: $(STAMP)
	$(BIN)/pytest -q tests/unit

format: $(STAMP)
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

## Re-resolves requirements.lock from pyproject.toml's ranges (dev extra included), with hashes.
## Keeps every pin that still fits; `make lock UPGRADE=--upgrade` (or `UPGRADE="-P celery"`)
## moves versions. Then `make install` and the tests (tests/unit/test_library_fences.py first).
lock: $(STAMP)
	$(BIN)/pip-compile --quiet --generate-hashes --allow-unsafe --strip-extras \
		--no-emit-index-url --no-emit-find-links --extra dev $(UPGRADE) \
		--output-file requirements.lock pyproject.toml

clean:
	rm -rf $(VENV) var .pytest_cache .mypy_cache .ruff_cache .hypothesis
