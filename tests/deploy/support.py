"""What the deploy/ tests share: the repository's paths, Compose's variable interpolation, and
whether our command line accepts a command as a deployment file writes it."""

from __future__ import annotations

import os
import re
import shlex
from pathlib import Path
from typing import Any

import typer.main

from entrypoints.cli.main import app

REPOSITORY = Path(__file__).resolve().parents[2]
DEPLOY = REPOSITORY / "deploy"

_VARIABLE = re.compile(r"\$\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:?[-?])(?P<arg>[^}]*))?\}")


def env_file(path: Path) -> dict[str, str]:
    """``NAME=value`` lines, comments and blank lines skipped (Compose's and systemd's format)."""
    values = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            name, _, value = line.partition("=")
            values[name.strip()] = value.strip()
    return values


def interpolate(value: Any, variables: dict[str, str]) -> Any:
    """Compose's ``${NAME}``, ``${NAME:-default}`` and ``${NAME:?error}`` over a loaded file;
    a required variable that is unset raises ``KeyError`` naming it."""
    if isinstance(value, dict):
        return {key: interpolate(item, variables) for key, item in value.items()}
    if isinstance(value, list):
        return [interpolate(item, variables) for item in value]
    if not isinstance(value, str):
        return value

    def one(match: re.Match[str]) -> str:
        name, op, arg = match["name"], match["op"], match["arg"]
        if variables.get(name):
            return variables[name]
        if op in (":-", "-"):
            return arg
        if op in (":?", "?"):
            raise KeyError(f"{name}: {arg}")
        return ""

    return _VARIABLE.sub(one, value)


def accepted_by_cli(argv: list[str]) -> None:
    """Parse ``aftersales ARGV`` as the command line would, without running it: unknown
    commands or options and values of the wrong type raise click's usage errors."""
    group = typer.main.get_command(app)
    context = group.context_class(group, info_name="aftersales")
    name, *rest = argv
    command = group.get_command(context, name)  # type: ignore[attr-defined]
    assert command is not None, f"aftersales has no command {name!r}"
    if isinstance(command, typer.core.TyperGroup):
        sub_name, *rest = rest
        sub = command.get_command(context, sub_name)
        assert sub is not None, f"aftersales {name} has no command {sub_name!r}"
        command, name = sub, sub_name
    command.make_context(name, rest, parent=context)


def exec_argv(line: str) -> list[str]:
    """A unit's ``ExecStart=`` value as argv, systemd's ``-``/``@`` prefixes aside."""
    return shlex.split(line.lstrip("-@+!"))


def which(name: str) -> str | None:
    for folder in os.environ.get("PATH", "").split(os.pathsep):
        candidate = Path(folder) / name
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    return None
