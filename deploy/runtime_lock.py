"""Print the part of requirements.lock the service needs at run time, hashes included.

requirements.lock pins everything, the dev tools too (pytest, mypy, hadolint, ...), so that one
file fixes every version. The image (deploy/Dockerfile) needs only what ``aftersales`` requires,
without its ``dev`` extra: this script walks the installed ``aftersales`` distribution's
requirements (extras and environment markers evaluated as pip does) through the packages
installed from the whole lock, and prints those packages' entries of the lock unchanged, so the
image installs them with ``pip install --require-hashes``.

Run it with the Python of an environment where the whole lock and the project are installed:

    python deploy/runtime_lock.py requirements.lock > runtime.lock

Exit 1 with a message when a required package is not in the lock (a stale lock: ``make lock``).
"""

from __future__ import annotations

import re
import sys
from importlib import metadata
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

PROJECT = "aftersales"


def runtime_packages(project: str = PROJECT) -> set[str]:
    """Canonical names of every package ``project`` needs, directly or not, without extras of
    its own (``dev``) but with the extras its requirements name (``celery[redis]``)."""
    seen: set[tuple[str, frozenset[str]]] = set()
    todo: list[tuple[str, frozenset[str]]] = [(project, frozenset())]
    while todo:
        name, extras = todo.pop()
        if (canonicalize_name(name), extras) in seen:
            continue
        seen.add((canonicalize_name(name), extras))
        for text in metadata.distribution(name).requires or []:
            requirement = Requirement(text)
            if requirement.marker is not None:
                # "extra == 'x'" holds for the extras asked for; other markers (python_version,
                # sys_platform) are judged on this interpreter, the image's own.
                environments = [{"extra": extra} for extra in sorted(extras)] or [{"extra": ""}]
                if not any(requirement.marker.evaluate(env) for env in environments):
                    continue
            todo.append((requirement.name, frozenset(requirement.extras)))
    return {name for name, _ in seen} - {canonicalize_name(project)}


def lock_entries(lock: str) -> dict[str, str]:
    """The lock's entries by canonical name: ``name==version`` with its ``--hash`` lines."""
    entries: dict[str, str] = {}
    name: str | None = None
    for line in lock.splitlines():
        if line and not line[0].isspace() and not line.startswith("#"):
            match = re.match(r"([A-Za-z0-9._-]+)==", line)
            if match is None:
                raise ValueError(f"not a pinned requirement: {line!r}")
            name = canonicalize_name(match[1])
            entries[name] = line
        elif name is not None and line.strip().startswith("--hash="):
            entries[name] += "\n" + line
        else:
            name = None if not line.startswith(" ") else name
    return entries


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print(f"usage: python {argv[0]} requirements.lock", file=sys.stderr)
        return 2
    entries = lock_entries(Path(argv[1]).read_text(encoding="utf-8"))
    needed = runtime_packages()
    missing = sorted(needed - entries.keys())
    if missing:
        print(
            f"runtime_lock: {', '.join(missing)} required but not in {argv[1]}; run `make lock`",
            file=sys.stderr,
        )
        return 1
    print(f"# The run-time part of {argv[1]}, written by deploy/runtime_lock.py.")
    for name in sorted(needed):
        print(entries[name])
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
