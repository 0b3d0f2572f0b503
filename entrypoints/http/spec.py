"""Writes or checks the committed OpenAPI document.

``python -m entrypoints.http.spec docs/openapi.json`` rewrites it; with ``--check`` it exits 1
when the file differs from what the code serves at ``/openapi.json`` (a test runs the check).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from entrypoints.http.app import openapi_document

DEFAULT_PATH = Path(__file__).resolve().parents[2] / "docs" / "openapi.json"


USAGE = "usage: python -m entrypoints.http.spec [--check] [PATH]  (default: docs/openapi.json)"


def openapi_text() -> str:
    return json.dumps(openapi_document(), indent=2, ensure_ascii=False) + "\n"


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    check = "--check" in args
    paths = [arg for arg in args if arg != "--check"]
    if len(paths) > 1 or any(path.startswith("-") for path in paths):
        # An option it does not know is not a file name to write the document to.
        print(USAGE, file=sys.stderr)
        return 2
    path = Path(paths[0]) if paths else DEFAULT_PATH
    text = openapi_text()
    if check:
        current = path.read_text(encoding="utf-8") if path.exists() else ""
        if current != text:
            print(f"{path} is out of date; run: python -m entrypoints.http.spec {path}")
            return 1
        return 0
    path.write_text(text, encoding="utf-8")
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
