#!/usr/bin/env bash
# Creates .venv with a Python >= 3.11 and installs into it the exact versions of requirements.lock
# (hash-checked; the dev tools included), then the project itself, editable, with --no-deps: the
# ranges of pyproject.toml never pick a version here (`make lock` updates the lock, see README).
# Works on a bare Debian/Ubuntu where python3-venv (ensurepip) is missing: then the venv is made
# without pip and pip is bootstrapped from its wheel on PyPI, which runs as a zip.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}

pick_python() {
  for candidate in "${PYTHON:-}" python3.13 python3.12 python3.11 python3; do
    [ -n "$candidate" ] || continue
    if command -v "$candidate" >/dev/null 2>&1 &&
       "$candidate" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
      echo "$candidate"; return 0
    fi
  done
  echo "error: aftersales needs Python 3.11 or newer (set PYTHON=/path/to/python3.11)" >&2
  return 1
}

if [ ! -x "$VENV/bin/python" ]; then
  py=$(pick_python)
  if ! "$py" -m venv "$VENV" 2>/dev/null; then
    rm -rf "$VENV"
    "$py" -m venv --without-pip "$VENV"
    wheel=$("$VENV/bin/python" - <<'PY'
import json, urllib.request, tempfile, os
meta = json.load(urllib.request.urlopen("https://pypi.org/pypi/pip/json", timeout=60))
url = next(f["url"] for f in meta["urls"] if f["filename"].endswith(".whl"))
path = os.path.join(tempfile.mkdtemp(), url.rsplit("/", 1)[1])
urllib.request.urlretrieve(url, path)
print(path)
PY
)
    "$VENV/bin/python" "$wheel/pip" install -q "$wheel"
  fi
fi
"$VENV/bin/python" -m pip install -q --require-hashes -r requirements.lock
# setuptools and wheel come from the lock too, so the build needs nothing unpinned.
"$VENV/bin/python" -m pip install -q --no-deps --no-build-isolation -e .
# The console's browser files (htmx, mermaid, Swagger UI, ReDoc) at the versions and hashes of
# entrypoints/http/console/vendor/package-lock.json, from the npm registry, once.
"$VENV/bin/python" scripts/fetch_console_assets.py
touch "$VENV/.installed"
