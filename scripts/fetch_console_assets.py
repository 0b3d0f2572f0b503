"""Fetch the browser files the console, /docs and /redoc serve, from the npm registry.

Reads the exact versions and sha512 integrity of ``entrypoints/http/console/vendor/
package-lock.json`` (written by ``npm install --package-lock-only`` there), downloads each
package's tarball once, checks it against the lock and extracts only the files listed below
into ``entrypoints/http/console/static/vendor/<package>/``. Standard library only: the set-up
needs no Node.js, and the service never fetches anything at run time.

Run by scripts/bootstrap-venv.sh; again by hand after changing the lock. ``NPM_CONFIG_REGISTRY``
names another registry (a mirror).
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import os
import shutil
import sys
import tarfile
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CONSOLE = ROOT / "entrypoints" / "http" / "console"
LOCK = CONSOLE / "vendor" / "package-lock.json"
TARGET = CONSOLE / "static" / "vendor"

#: package -> the files of its tarball (under ``package/``) the pages load.
FILES: dict[str, tuple[str, ...]] = {
    "htmx.org": ("dist/htmx.min.js", "LICENSE"),
    "mermaid": ("dist/mermaid.min.js", "LICENSE"),
    "swagger-ui-dist": ("swagger-ui-bundle.js", "swagger-ui.css", "favicon-32x32.png", "LICENSE"),
    "redoc": ("bundles/redoc.standalone.js", "LICENSE"),
}


def _registry() -> str:
    return os.environ.get("NPM_CONFIG_REGISTRY", "https://registry.npmjs.org/").rstrip("/")


def _tarball_url(name: str, version: str, entry: dict[str, str]) -> str:
    if "resolved" in entry:
        return entry["resolved"]
    return f"{_registry()}/{name}/-/{name.rsplit('/', 1)[-1]}-{version}.tgz"


def _check_integrity(name: str, data: bytes, integrity: str) -> None:
    algorithm, _, expected = integrity.partition("-")
    digest = base64.b64encode(hashlib.new(algorithm, data).digest()).decode("ascii")
    if digest != expected:
        raise SystemExit(f"error: {name}'s tarball does not match the lock's {algorithm}")


def fetch(name: str, entry: dict[str, str]) -> None:
    version, integrity = entry["version"], entry["integrity"]
    folder = TARGET / name
    stamp = folder / ".integrity"
    if stamp.is_file() and stamp.read_text() == integrity:
        return
    url = _tarball_url(name, version, entry)
    with urllib.request.urlopen(url, timeout=120) as answer:
        data = answer.read()
    _check_integrity(name, data, integrity)
    shutil.rmtree(folder, ignore_errors=True)
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as archive:
        for member_path in FILES[name]:
            member = archive.extractfile(f"package/{member_path}")
            if member is None:
                raise SystemExit(f"error: {name}@{version} has no {member_path}")
            out = folder / Path(member_path).name
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_bytes(member.read())
    stamp.write_text(integrity)
    print(f"console assets: {name}@{version}")


def main() -> int:
    packages = json.loads(LOCK.read_text())["packages"]
    for name in FILES:
        fetch(name, packages[f"node_modules/{name}"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
