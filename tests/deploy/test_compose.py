"""deploy/compose.yaml: valid against the Compose Specification's JSON Schema (vendored in
deploy/schema/), and the deployment it describes: one beat, N workers, migrations first."""

from __future__ import annotations

import json
from typing import Any

import jsonschema
import pytest
import yaml
from sqlalchemy.engine import make_url

from .support import DEPLOY, accepted_by_cli, env_file, interpolate

OURS = ("migrate", "api", "worker", "beat", "flower")


def load() -> dict[str, Any]:
    document = yaml.safe_load((DEPLOY / "compose.yaml").read_text(encoding="utf-8"))
    assert isinstance(document, dict)
    return document


@pytest.fixture
def compose() -> dict[str, Any]:
    """The file as Compose reads it with deploy/env.example as its .env."""
    resolved = interpolate(load(), env_file(DEPLOY / "env.example"))
    assert isinstance(resolved, dict)
    return resolved


def test_the_file_is_valid_against_the_compose_spec_schema() -> None:
    schema = json.loads((DEPLOY / "schema" / "compose-spec.json").read_text(encoding="utf-8"))
    jsonschema.Draft7Validator.check_schema(schema)

    errors = [
        f"{'/'.join(map(str, error.absolute_path))}: {error.message}"
        for error in jsonschema.Draft7Validator(schema).iter_errors(load())
    ]

    assert errors == []


def test_the_schema_check_can_fail() -> None:
    # given the file with a misspelt key, the mistake the check exists for
    schema = json.loads((DEPLOY / "schema" / "compose-spec.json").read_text(encoding="utf-8"))
    broken = load()
    broken["services"]["worker"]["replica"] = 3

    # then
    assert not jsonschema.Draft7Validator(schema).is_valid(broken)


def test_the_services_of_a_deployment(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert set(services) == {"postgres", "redis", *OURS}
    assert services["beat"]["deploy"]["replicas"] == 1
    assert int(services["worker"]["deploy"]["replicas"]) >= 1
    for name in OURS:
        assert services[name]["image"] == services["api"]["image"], name
    for name, service in services.items():
        assert service.get("restart") in ("unless-stopped", "always", "no"), name
    for name in ("postgres", "redis", "api"):
        assert services[name]["healthcheck"]["test"], name


def test_migrations_run_before_the_service_starts(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert services["migrate"]["command"] == ["db", "upgrade"]
    assert services["migrate"]["restart"] == "no"
    assert services["migrate"]["depends_on"]["postgres"]["condition"] == "service_healthy"
    for name in ("api", "worker", "beat"):
        depends = services[name]["depends_on"]
        assert depends["migrate"]["condition"] == "service_completed_successfully", name


def test_every_process_gets_the_same_database_and_broker(compose: dict[str, Any]) -> None:
    services = compose["services"]
    for name in OURS:
        environment = services[name]["environment"]
        url = make_url(environment["AFTERSALES_DATABASE_URL"])
        assert (url.get_backend_name(), url.host, url.database) == (
            "postgresql",
            "postgres",
            "aftersales",
        )
        assert url.password == env_file(DEPLOY / "env.example")["POSTGRES_PASSWORD"]
        assert environment["AFTERSALES_BROKER_URL"] == "redis://redis:6379/0"
        assert int(environment["AFTERSALES_DATABASE_POOL_SIZE"]) >= 1


def test_secrets_have_no_defaults() -> None:
    # when nothing sets the passwords, then Compose refuses to start, naming what is missing
    with pytest.raises(KeyError, match="POSTGRES_PASSWORD"):
        interpolate(load(), {})


def test_the_api_signs_console_sessions_with_a_secret_of_the_deployment(
    compose: dict[str, Any],
) -> None:
    # a secret per process would end every console sign-in at each restart of the API
    environment = compose["services"]["api"]["environment"]
    secret = env_file(DEPLOY / "env.example")["CONSOLE_SECRET"]
    assert environment["AFTERSALES_API_CONSOLE_SECRET"] == secret
    # and, as the passwords, it has no default
    without = env_file(DEPLOY / "env.example")
    del without["CONSOLE_SECRET"]
    with pytest.raises(KeyError, match="CONSOLE_SECRET"):
        interpolate(load(), without)


def test_the_aftersales_commands_are_ones_the_cli_accepts(compose: dict[str, Any]) -> None:
    for name in ("migrate", "api", "worker", "beat"):
        accepted_by_cli([str(part) for part in compose["services"][name]["command"]])


def test_flower_runs_from_the_celery_app_module(compose: dict[str, Any]) -> None:
    flower = compose["services"]["flower"]
    assert flower["entrypoint"][:4] == ["celery", "--app", "entrypoints.celery_app", "flower"]
    assert flower["environment"]["FLOWER_BASIC_AUTH"]
    # Published on the host's loopback only: Flower can revoke tasks and stop workers.
    assert all(port.startswith("127.0.0.1:") for port in flower["ports"])
