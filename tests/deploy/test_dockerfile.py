"""deploy/Dockerfile, checked without a Docker engine: parsed (``dockerfile-parse``), linted by
hadolint, and read for what the image promises: the lock's exact versions with their hashes,
only the run-time part of it, a user that is not root."""

from __future__ import annotations

import json
import shlex
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
from dockerfile_parse import DockerfileParser

from .support import DEPLOY, REPOSITORY, which

DOCKERFILE = DEPLOY / "Dockerfile"


@dataclass(frozen=True)
class Instruction:
    cmd: str
    #: The arguments, continuation lines joined; flags (``--from=build``) apart.
    value: tuple[str, ...]
    flags: tuple[str, ...]
    json: bool


def instructions() -> list[Instruction]:
    found = []
    for item in DockerfileParser(str(DOCKERFILE)).structure:
        if item["instruction"] == "COMMENT":
            continue
        text = " ".join(item["value"].split())
        if text.startswith("["):
            found.append(Instruction(item["instruction"], tuple(json.loads(text)), (), True))
            continue
        words = text.split(" ") if item["instruction"] in ("COPY", "USER") else [text]
        flags = tuple(word for word in words if word.startswith("--"))
        value = tuple(word for word in words if not word.startswith("--"))
        found.append(Instruction(item["instruction"], value, flags, False))
    return found


def final_stage() -> list[Instruction]:
    commands = instructions()
    last_from = max(i for i, command in enumerate(commands) if command.cmd == "FROM")
    return commands[last_from:]


def pip_installs() -> list[list[str]]:
    """Each ``pip install`` of every RUN, as argv."""
    found = []
    for command in instructions():
        if command.cmd != "RUN":
            continue
        for part in " ".join(command.value).split("&&"):
            argv = shlex.split(part)
            if len(argv) > 2 and argv[0].endswith("/pip") and argv[1] == "install":
                found.append(argv)
    return found


def test_hadolint_finds_nothing() -> None:
    hadolint = Path(sys.executable).with_name("hadolint")
    path = str(hadolint) if hadolint.exists() else which("hadolint")
    if path is None:
        pytest.skip("hadolint is not installed (it comes with the dev extra: make install)")

    done = subprocess.run(
        [path, "--no-color", str(DOCKERFILE)], capture_output=True, text=True, timeout=60
    )

    assert done.returncode == 0, done.stdout + done.stderr


def test_every_package_comes_from_the_lock_with_its_hashes() -> None:
    installs = pip_installs()
    assert installs, "no pip install found"
    for argv in installs:
        if "-r" in argv:
            # Requirements files: only the lock and its run-time part, always hash-checked.
            assert "--require-hashes" in argv, argv
            assert argv[argv.index("-r") + 1] in ("requirements.lock", "/wheels/runtime.lock")
        else:
            # The project's own wheel, built here: never anything resolved from an index.
            assert "--no-deps" in argv, argv
            assert all(arg.startswith("-") or arg.endswith(".whl") for arg in argv[2:]), argv
    copied = [" ".join(c.value) for c in instructions() if c.cmd == "COPY"]
    assert any(value.startswith("requirements.lock ") for value in copied)


def test_the_image_gets_only_the_run_time_part_of_the_lock() -> None:
    runs = " ".join(" ".join(c.value) for c in instructions() if c.cmd == "RUN")
    assert "deploy/runtime_lock.py requirements.lock > /wheels/runtime.lock" in runs
    stage = final_stage()
    copies = [c for c in stage if c.cmd == "COPY"]
    assert [" ".join(c.value) for c in copies] == ["/opt/aftersales /opt/aftersales"]
    assert copies[0].flags == ("--from=build",)


def test_the_image_runs_as_a_user_without_privileges() -> None:
    users = [c.value[0] for c in final_stage() if c.cmd == "USER"]
    assert users, "no USER in the final stage"
    user = users[-1].split(":")[0]
    assert user.isdigit() and int(user) != 0, users[-1]
    entrypoint = next(c for c in final_stage() if c.cmd == "ENTRYPOINT")
    assert entrypoint.json and entrypoint.value == ("aftersales",)


def test_what_it_copies_exists_and_is_in_the_build_context() -> None:
    ignored = (REPOSITORY / ".dockerignore").read_text(encoding="utf-8").splitlines()
    allowed = {line[1:].rstrip("/") for line in ignored if line.startswith("!")}
    for command in instructions():
        if command.cmd != "COPY" or any(flag.startswith("--from") for flag in command.flags):
            continue
        *sources, _target = command.value
        for source in sources:
            assert (REPOSITORY / source).exists(), source
            assert source.rstrip("/") in allowed, f"{source} is left out by .dockerignore"
