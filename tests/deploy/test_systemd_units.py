"""deploy/systemd: every unit passes ``systemd-analyze verify`` (where systemd is installed),
restarts by itself, reads the shared environment file, and runs a command our CLI accepts."""

from __future__ import annotations

import configparser
import shutil
import subprocess
from pathlib import Path

import pytest

from .support import DEPLOY, accepted_by_cli, env_file, exec_argv, which

UNITS = sorted((DEPLOY / "systemd").glob("*.service"))
INSTALLED_BIN = "/opt/aftersales/bin/"


def unit(path: Path) -> configparser.ConfigParser:
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read(path, encoding="utf-8")
    return parser


def test_the_deployment_has_its_four_units() -> None:
    assert [path.name for path in UNITS] == [
        "aftersales-api.service",
        "aftersales-beat.service",
        "aftersales-flower.service",
        "aftersales-worker@.service",
    ]


@pytest.mark.parametrize("path", UNITS, ids=lambda path: path.name)
def test_systemd_analyze_verify_finds_nothing(path: Path, tmp_path: Path) -> None:
    analyze = which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed here (Debian: apt-get install systemd)")
    # verify also checks that ExecStart's program exists: stand-ins for the installed
    # virtualenv's scripts, the rest of each unit unchanged.
    stand_ins = tmp_path / "bin"
    stand_ins.mkdir()
    for name in ("aftersales", "celery"):
        (stand_ins / name).write_text("#!/bin/sh\n")
        (stand_ins / name).chmod(0o755)
    copy = tmp_path / path.name
    copy.write_text(path.read_text(encoding="utf-8").replace(INSTALLED_BIN, f"{stand_ins}/"))

    done = subprocess.run(
        [analyze, "verify", "--man=no", str(copy)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
    )

    # Unknown keys and bad values are only warnings (exit 0): any output is a finding.
    assert done.returncode == 0, done.stderr
    assert done.stdout + done.stderr == ""


def test_verify_reports_a_misspelt_key(tmp_path: Path) -> None:
    analyze = which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed here (Debian: apt-get install systemd)")
    broken = tmp_path / "broken.service"
    broken.write_text(f"[Service]\nExecStart={shutil.which('true')}\nRestartt=always\n")

    done = subprocess.run(
        [analyze, "verify", "--man=no", str(broken)], capture_output=True, text=True, timeout=60
    )

    assert "Unknown key 'Restartt'" in done.stderr


@pytest.mark.parametrize("path", UNITS, ids=lambda path: path.name)
def test_restarts_and_reads_the_shared_environment_file(path: Path) -> None:
    service = unit(path)["Service"]
    assert service["Restart"] in ("always", "on-failure")
    assert service["RestartSec"]
    assert service["User"] == "aftersales"
    with path.open(encoding="utf-8") as lines:
        environment_files = [
            line.split("=", 1)[1].strip() for line in lines if line.startswith("EnvironmentFile=")
        ]
    assert environment_files[0] == "/etc/aftersales/aftersales.env"


def test_beat_is_a_single_unit_and_workers_a_template() -> None:
    names = {path.name for path in UNITS}
    assert "aftersales-beat.service" in names and "aftersales-beat@.service" not in names
    assert "aftersales-worker@.service" in names


@pytest.mark.parametrize(
    "name", ["aftersales-api.service", "aftersales-beat.service", "aftersales-worker@.service"]
)
def test_the_command_is_one_the_cli_accepts(name: str) -> None:
    argv = command_of(name, {})
    assert argv[0] == f"{INSTALLED_BIN}aftersales"
    accepted_by_cli(argv[1:])


def test_a_worker_instance_takes_its_own_options() -> None:
    # given /etc/aftersales/worker-2.env making instance 2 a dedicated timer sweeper
    options = {"WORKER_OPTIONS": "--queues timers --concurrency 1"}

    # when systemd builds instance 2's command line
    argv = command_of("aftersales-worker@.service", options)

    # then the options reach the worker, which accepts them beside its node name
    assert argv[-4:] == ["--queues", "timers", "--concurrency", "1"]
    assert "worker-1@host" in argv
    accepted_by_cli(argv[1:])


def command_of(name: str, environment: dict[str, str]) -> list[str]:
    """A unit's command as systemd runs it for instance 1 on ``host``: a ``$NAME`` word becomes
    the variable's words (none when unset), as systemd.service(5) says."""
    argv = exec_argv(unit(DEPLOY / "systemd" / name)["Service"]["ExecStart"])
    expanded = []
    for part in argv:
        if part.startswith("$") and not part.startswith("${"):
            expanded.extend(environment.get(part[1:], "").split())
        else:
            expanded.append(part.replace("%i", "1").replace("%H", "host"))
    return expanded


def test_the_shared_settings_give_the_api_processes_one_console_secret() -> None:
    # every API host signs console sessions with the same key, which outlives restarts
    settings = env_file(DEPLOY / "systemd" / "aftersales.env.example")
    assert settings.get("AFTERSALES_API_CONSOLE_SECRET")
