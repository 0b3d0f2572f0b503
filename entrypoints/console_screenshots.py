"""``python -m entrypoints.console_screenshots [--out docs]``: screenshots of the console's queue
and case page, at 1280 px and 390 px wide, from a seeded showcase server.

Drives Debian's Chromium (``/usr/bin/chromium``, ``apt-get install chromium``) with Playwright
(the project's dev dependencies); Playwright never downloads a browser here. The browser tests
start Chromium the same way (``launch``).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

from entrypoints.console_showcase import showcase_server

if TYPE_CHECKING:
    from playwright.sync_api import Browser, Page, Playwright

#: Debian's Chromium; Playwright drives it instead of a browser of its own.
CHROMIUM = Path("/usr/bin/chromium")
#: Headless, and nothing that would reach out to the network or a profile.
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
#: (name, width, height): a laptop, and a phone held upright.
VIEWPORTS = [("1280", 1280, 800), ("390", 390, 844)]
#: Generous for a busy 2-core machine; a wait ends as soon as its condition holds.
TIMEOUT_MS = 30_000


def launch(playwright: Playwright) -> Browser:
    return playwright.chromium.launch(
        executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS
    )


def sign_in(page: Page, base_url: str, token: str) -> None:
    """Sign in through the form, as a person pastes a token."""
    page.goto(f"{base_url}/console/sign-in")
    page.get_by_label("API token").fill(token)
    page.get_by_role("button", name="Sign in").click()
    page.wait_for_url(f"{base_url}/console/queue")


def take(out: Path) -> list[Path]:
    from playwright.sync_api import sync_playwright

    written = []
    with (
        tempfile.TemporaryDirectory(prefix="console-shots-") as folder,
        showcase_server(Path(folder)) as server,
        sync_playwright() as playwright,
    ):
        browser = launch(playwright)
        for name, width, height in VIEWPORTS:
            context = browser.new_context(
                viewport={"width": width, "height": height}, timezone_id="Asia/Shanghai"
            )
            context.set_default_timeout(TIMEOUT_MS)
            page = context.new_page()
            sign_in(page, server.url, server.seeded.admin)
            queue = out / f"console-queue-{name}.png"
            page.screenshot(path=str(queue), full_page=True)
            page.goto(f"{server.url}/console/cases/{server.seeded.overdue_case}")
            page.locator("body[data-diagram=drawn]").wait_for()
            case = out / f"console-case-{name}.png"
            page.screenshot(path=str(case), full_page=True)
            written += [queue, case]
            context.close()
        browser.close()
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--out", type=Path, default=Path("docs"), help="folder of the PNGs")
    args = parser.parse_args(argv)
    if not CHROMIUM.exists():
        print(f"error: no {CHROMIUM}: apt-get install chromium", file=sys.stderr)
        return 1
    args.out.mkdir(parents=True, exist_ok=True)
    for path in take(args.out):
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
