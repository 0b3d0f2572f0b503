"""Keep the Mermaid diagrams embedded in Markdown equal to ``aftersales diagram --type T``.

A document holds, per case type, a block between ``<!-- diagram:TYPE -->`` and
``<!-- /diagram:TYPE -->`` with a fenced ``mermaid`` block inside. ``python -m
entrypoints.readme_diagrams README.md`` rewrites those blocks from the transition table;
``--check`` only reports stale or missing ones (exit 1), for CI and the e2e test.
"""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Sequence
from pathlib import Path

from workflow.diagram import mermaid
from workflow.states import CaseType

_BLOCK = re.compile(
    r"(?P<open><!-- diagram:(?P<type>[a-z_]+) -->\n)"
    r"(?P<body>.*?)"
    r"(?P<close><!-- /diagram:(?P=type) -->)",
    re.DOTALL,
)
_FENCE = re.compile(r"```mermaid\n(?P<diagram>.*?)```", re.DOTALL)


def fenced(case_type: CaseType) -> str:
    """The body a block should have: the generator's text in a mermaid fence."""
    return f"```mermaid\n{mermaid(case_type)}```\n"


def embedded(text: str) -> dict[str, str]:
    """The diagram text inside each block, by type (as written, not checked)."""
    found = {}
    for match in _BLOCK.finditer(text):
        fence = _FENCE.search(match.group("body"))
        found[match.group("type")] = fence.group("diagram") if fence else ""
    return found


def stale(text: str) -> list[str]:
    """Types whose block is missing, or differs from the generator's output."""
    blocks = embedded(text)
    problems = [
        f"{case_type.value}: no <!-- diagram:{case_type.value} --> block"
        for case_type in CaseType
        if case_type.value not in blocks
    ]
    for name, diagram in blocks.items():
        if name not in CaseType.__members__.values():
            problems.append(f"{name}: not a case type")
        elif diagram != mermaid(CaseType(name)):
            problems.append(f"{name}: diagram is stale")
    return problems


def rewrite(text: str) -> str:
    """``text`` with every known type's block body regenerated; other text untouched."""

    def replace(match: re.Match[str]) -> str:
        name = match.group("type")
        if name not in CaseType.__members__.values():
            return match.group(0)
        return match.group("open") + fenced(CaseType(name)) + match.group("close")

    return _BLOCK.sub(replace, text)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("path", type=Path, nargs="?", default=Path("README.md"))
    parser.add_argument("--check", action="store_true", help="only report; exit 1 if stale")
    args = parser.parse_args(argv)
    path: Path = args.path
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as error:
        print(f"error: cannot read {path}: {error.strerror}", file=sys.stderr)
        return 2
    if args.check:
        problems = stale(text)
        for problem in problems:
            print(f"{path}: {problem}", file=sys.stderr)
        if problems:
            print(f"run: python -m entrypoints.readme_diagrams {path}", file=sys.stderr)
        return 1 if problems else 0
    updated = rewrite(text)
    if updated != text:
        path.write_text(updated, encoding="utf-8")
    # Blocks that do not exist yet cannot be rewritten; say so rather than pass silently.
    missing = [problem for problem in stale(updated)]
    for problem in missing:
        print(f"{path}: {problem}", file=sys.stderr)
    return 1 if missing else 0


if __name__ == "__main__":
    sys.exit(main())
