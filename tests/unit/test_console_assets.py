"""The console's browser files: pinned with their hashes, checked when fetched, all present."""

from __future__ import annotations

import base64
import hashlib
import importlib.util
import json
from pathlib import Path
from types import ModuleType

import pytest

from entrypoints.http.console.assets import missing_vendor_files

ROOT = Path(__file__).resolve().parents[2]


def fetcher() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "fetch_console_assets", ROOT / "scripts" / "fetch_console_assets.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_every_fetched_package_is_pinned_with_a_sha512_in_the_lock() -> None:
    module = fetcher()
    packages = json.loads(module.LOCK.read_text())["packages"]
    for name in module.FILES:
        entry = packages[f"node_modules/{name}"]
        assert entry["version"] and entry["integrity"].startswith("sha512-"), name


def test_a_tarball_that_does_not_match_the_lock_is_refused() -> None:
    module = fetcher()
    data = b"the real tarball"
    integrity = "sha512-" + base64.b64encode(hashlib.sha512(data).digest()).decode()
    module._check_integrity("x", data, integrity)
    with pytest.raises(SystemExit, match="does not match"):
        module._check_integrity("x", b"something else", integrity)


def test_the_set_up_fetched_every_file_the_pages_load() -> None:
    assert missing_vendor_files() == []
