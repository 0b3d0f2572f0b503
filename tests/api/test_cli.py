"""``aftersales tokens`` and ``aftersales serve`` as a user runs them."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta
from pathlib import Path

import httpx
import pytest
from typer.testing import CliRunner

from config.settings import sqlite_url
from entrypoints.cli.main import app
from entrypoints.processes import ChildProcess, free_port


@pytest.fixture
def env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    monkeypatch.setenv("AFTERSALES_DATABASE_URL", sqlite_url(tmp_path / "var" / "api.db"))
    monkeypatch.delenv("AFTERSALES_POLICY_FILE", raising=False)
    monkeypatch.delenv("AFTERSALES_SOURCES_FILE", raising=False)
    monkeypatch.delenv("AFTERSALES_BROKER_URL", raising=False)
    monkeypatch.chdir(tmp_path)
    return {**os.environ, "NO_COLOR": "1", "TERM": "dumb"}


def invoke(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(app, list(args))
    return result.exit_code, result.stdout, result.stderr


def test_tokens_create_shows_the_secret_once_and_revoke_ends_it(env: dict[str, str]) -> None:
    # when a merchant token is created
    code, out, _ = invoke("tokens", "create", "--role", "merchant:m1", "--name", "m1 backend")
    assert code == 0
    secret = out.strip().splitlines()[-1]
    assert secret.startswith("ast_")
    # then the list shows it, never its secret
    code, out, _ = invoke("tokens", "list", "--json")
    listed = json.loads(out)
    assert [(t["id"], t["role"], t["name"]) for t in listed] == [(1, "merchant:m1", "m1 backend")]
    assert secret not in out
    # and --json gives the secret as `token`
    code, out, _ = invoke("tokens", "create", "--role", "producer:sf-express", "--json")
    created = json.loads(out)
    assert created["role"] == "producer:sf-express"
    assert created["token"].startswith("ast_")
    # when one is revoked it leaves the live list
    code, out, _ = invoke("tokens", "revoke", "1", "--json")
    assert code == 0
    assert json.loads(out)["revoked_at"] is not None
    code, out, _ = invoke("--json", "tokens", "list")
    assert [t["id"] for t in json.loads(out)] == [2]


@pytest.mark.parametrize("role", ["merchant", "buyer:", "producer", "root", "buyer:a b"])
def test_tokens_create_refuses_bad_roles(env: dict[str, str], role: str) -> None:
    code, _, err = invoke("--json", "tokens", "create", "--role", role)
    assert code == 2
    assert json.loads(err)["error"]["field"] == "role"


def test_tokens_create_refuses_a_producer_of_an_unknown_source(env: dict[str, str]) -> None:
    # given the default sources, which do not know yto
    # when a token is asked for it
    code, out, err = invoke("--json", "tokens", "create", "--role", "producer:yto")
    # then it is refused, naming the configured sources, and nothing was created
    assert code == 2 and out == ""
    error = json.loads(err)["error"]
    assert error["field"] == "role" and "sf-express" in error["message"]
    assert json.loads(invoke("--json", "tokens", "list")[1]) == []


def test_tokens_create_admits_a_source_configured_in_a_sources_file(
    env: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    sources = tmp_path / "sources.toml"
    sources.write_text('[sources]\nyto = "carrier"\n', encoding="utf-8")
    monkeypatch.setenv("AFTERSALES_SOURCES_FILE", str(sources))
    code, out, _ = invoke("--json", "tokens", "create", "--role", "producer:yto")
    assert code == 0 and json.loads(out)["role"] == "producer:yto"


def test_tokens_revoke_unknown_is_not_found(env: dict[str, str]) -> None:
    code, _, err = invoke("--json", "tokens", "revoke", "42")
    assert code == 3
    assert json.loads(err)["error"]["code"] == "not_found"


@pytest.mark.parametrize("token_id", ["0", str(2**63), "99999999999999999999"])
def test_tokens_revoke_an_id_the_database_cannot_hold_is_a_usage_error(
    env: dict[str, str], token_id: str
) -> None:
    # before: 2**63 and above ended in an OverflowError traceback
    code, _, err = invoke("tokens", "revoke", token_id)
    assert code == 2
    assert "Traceback" not in err


def test_tokens_expire_when_asked_and_the_list_shows_expiry_and_last_use(
    env: dict[str, str],
) -> None:
    # when a token is created to expire in 30 days
    code, out, _ = invoke("--json", "tokens", "create", "--role", "buyer:b1", "--expires-in", "30d")
    assert code == 0, out
    created = json.loads(out)
    # then its expiry is 30 days after its creation, and it was never used
    lifetime = datetime.fromisoformat(created["expires_at"]) - datetime.fromisoformat(
        created["created_at"]
    )
    assert lifetime == timedelta(days=30)
    assert created["last_used_at"] is None
    # and the table has a header, the expiry and the last use
    code, out, _ = invoke("tokens", "list")
    lines = out.splitlines()
    header = next(line for line in lines if line.strip())
    assert header.split() == ["id", "role", "name", "created", "status", "last", "used"]
    assert "live until" in out and "never" in out


@pytest.mark.parametrize(
    "lifetime, says",
    [
        *((text, "") for text in ["30", "0d", "thirty days", "-1d", "1y"]),
        # the expiry would land past the year 9000 (or past what a date can hold at all)
        *(
            (text, "9000")
            for text in ["999999w", "999999d999999d999999d999999d", "999999d999999d600000d"]
        ),
    ],
)
def test_tokens_create_refuses_a_lifetime_it_cannot_use(
    env: dict[str, str], lifetime: str, says: str
) -> None:
    # when a token is asked for with a lifetime that is no duration, or one too long
    code, out, err = invoke(
        "--json", "tokens", "create", "--role", "admin", "--expires-in", lifetime
    )

    # then it is a usage error naming the option, and no token was made
    assert (code, out) == (2, "")
    assert json.loads(err)["error"]["field"] == "expires_in"
    assert says in json.loads(err)["error"]["message"]
    assert json.loads(invoke("--json", "tokens", "list")[1]) == []


@contextmanager
def serving(env: dict[str, str], tmp_path: Path) -> Iterator[tuple[str, ChildProcess]]:
    """``aftersales serve`` started as a shell would; its base URL once it answers. Sent SIGTERM
    and waited for on the way out."""
    port = free_port()
    script = Path(sys.executable).with_name("aftersales")
    command = [str(script)] if script.exists() else [sys.executable, "-m", "entrypoints.cli"]
    command += ["serve", "--port", str(port)]
    log = tmp_path / f"serve-{port}.log"
    server = ChildProcess(command, log, env=env, cwd=tmp_path).start()
    base = f"http://127.0.0.1:{port}"

    def healthy() -> bool:
        try:
            return httpx.get(f"{base}/healthz", timeout=1).status_code == 200
        except httpx.TransportError:
            return False

    try:
        server.wait_until(healthy, "the server to come up", timeout=30)
        yield base, server
    finally:
        server.terminate()
        server.wait(timeout=30)


def _guesses(base: str, forwarded_for: list[str]) -> list[int]:
    return [
        httpx.get(
            f"{base}/cases",
            headers={"Authorization": "Bearer ast_guess", "X-Forwarded-For": address},
        ).status_code
        for address in forwarded_for
    ]


def test_a_rotating_forwarded_for_does_not_dodge_the_failed_sign_in_limit(
    env: dict[str, str], tmp_path: Path
) -> None:
    # given the server as deployed by default (no proxy trusted), 3 failures a minute allowed
    env = {**env, "AFTERSALES_API_AUTH_FAILURES_PER_MINUTE": "3"}
    with serving(env, tmp_path) as (base, _):
        # when a client on 127.0.0.1 guesses tokens, claiming another address each time
        statuses = _guesses(base, [f"198.51.100.{n}" for n in range(5)])
    # then the limit counts it as the one client it is (before: uvicorn believed the header
    # from 127.0.0.1, and each guess was a new client)
    assert statuses == [401, 401, 401, 429, 429]


def test_a_trusted_proxy_forwards_the_client_address(env: dict[str, str], tmp_path: Path) -> None:
    # given a server behind a proxy on 127.0.0.1 that it is told to trust
    env = {
        **env,
        "AFTERSALES_API_AUTH_FAILURES_PER_MINUTE": "3",
        "AFTERSALES_API_TRUSTED_PROXIES": "127.0.0.1, 10.0.0.0/8",
    }
    with serving(env, tmp_path) as (base, _):
        # when clients behind it guess, each from its own address
        spread = _guesses(base, [f"198.51.100.{n}" for n in range(5)])
        # and one client guesses on and on
        one = _guesses(base, ["203.0.113.5"] * 4)
    # then each client is limited on its own
    assert spread == [401] * 5
    assert one == [401, 401, 401, 429]


@pytest.mark.parametrize("command", ["serve", "run"])
def test_a_taken_port_is_one_line_and_exit_1(
    env: dict[str, str], tmp_path: Path, command: str
) -> None:
    # given something listening on the port already
    script = Path(sys.executable).with_name("aftersales")
    program = [str(script)] if script.exists() else [sys.executable, "-m", "entrypoints.cli"]
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]

        # when the API (alone, or beside the worker) is asked to listen there
        done = subprocess.run(
            [*program, command, "--port", str(port)],
            capture_output=True,
            text=True,
            env=env,
            cwd=tmp_path,
            timeout=60,
        )

    # then it says so on one line, with the setup error's code, before starting anything
    assert done.returncode == 1, done.stderr
    assert done.stderr.splitlines() == [
        f"error: cannot serve the API on 127.0.0.1:{port}: address already in use; stop what "
        "listens there, or choose another port (--port)"
    ]


def test_serve_answers_over_http_until_sigterm(env: dict[str, str], tmp_path: Path) -> None:
    # given a token, and `aftersales serve` started as a shell would
    _, out, _ = invoke("tokens", "create", "--role", "admin", "--json")
    secret = json.loads(out)["token"]
    with serving(env, tmp_path) as (base, server):
        # then it serves the API with that token, and the OpenAPI document
        headers = {"Authorization": f"Bearer {secret}"}
        listed = httpx.get(f"{base}/cases", headers=headers).json()
        assert (listed["cases"], listed["next_cursor"], listed["next_after"]) == ([], None, None)
        assert httpx.get(f"{base}/cases").status_code == 401
        assert httpx.get(f"{base}/openapi.json").json()["info"]["title"] == "aftersales"
    # and stops on SIGTERM: uvicorn shuts down, then re-raises the signal it caught (the shell
    # sees SIGTERM)
    assert server.returncode in (0, -signal.SIGTERM)
    assert "Finished server process" in server.output()
