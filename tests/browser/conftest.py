"""Browser tests of the console: Playwright drives Debian's Chromium (``/usr/bin/chromium``)
against ``aftersales serve`` in a real process on a seeded SQLite database.

Skipped when Chromium is not installed, unless ``AFTERSALES_REQUIRE_BROWSER`` is set (``.ci/run``
sets it and installs Chromium): then a missing browser fails the run. Every wait is Playwright's
auto-wait or ``expect`` on a condition, never a sleep.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from entrypoints.console_screenshots import CHROMIUM, TIMEOUT_MS, launch
from entrypoints.console_showcase import ShowcaseServer, showcase_server

REQUIRE_BROWSER_ENV = "AFTERSALES_REQUIRE_BROWSER"

if not CHROMIUM.exists():
    if os.environ.get(REQUIRE_BROWSER_ENV):
        raise RuntimeError(f"{REQUIRE_BROWSER_ENV} is set but {CHROMIUM} is missing")
    pytest.skip(
        f"browser tests need {CHROMIUM} (apt-get install chromium)", allow_module_level=True
    )

from playwright.sync_api import Browser, Page, Playwright, expect, sync_playwright  # noqa: E402

expect.set_options(timeout=TIMEOUT_MS)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ShowcaseServer]:
    """One seeded server per test module; each test works on its own cases."""
    with showcase_server(Path(tmp_path_factory.mktemp("console"))) as running:
        yield running


@pytest.fixture(scope="module")
def playwright() -> Iterator[Playwright]:
    with sync_playwright() as driver:
        yield driver


@pytest.fixture(scope="module")
def browser(playwright: Playwright) -> Iterator[Browser]:
    chromium = launch(playwright)
    yield chromium
    chromium.close()


@pytest.fixture
def new_page(browser: Browser) -> Iterator[Callable[[], Page]]:
    """``new_page()``: a page in a fresh browser context (its own cookies), Asia/Shanghai."""
    contexts = []

    def make() -> Page:
        context = browser.new_context(
            viewport={"width": 1280, "height": 900}, timezone_id="Asia/Shanghai"
        )
        context.set_default_timeout(TIMEOUT_MS)
        contexts.append(context)
        return context.new_page()

    yield make
    for context in contexts:
        context.close()
