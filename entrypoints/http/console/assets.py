"""The console's static files: our CSS and script, and the third-party files (htmx, mermaid,
Swagger UI, ReDoc) that scripts/fetch_console_assets.py put under ``static/vendor/`` at set-up."""

from __future__ import annotations

from pathlib import Path

STATIC = Path(__file__).parent / "static"
#: URL path the static folder is served at.
STATIC_URL = "/console/static"


def vendor_url(package: str, name: str) -> str:
    return f"{STATIC_URL}/vendor/{package}/{name}"


def missing_vendor_files() -> list[str]:
    """Third-party files the pages load that are not there (set-up not run)."""
    wanted = [
        ("htmx.org", "htmx.min.js"),
        ("mermaid", "mermaid.min.js"),
        ("swagger-ui-dist", "swagger-ui-bundle.js"),
        ("swagger-ui-dist", "swagger-ui.css"),
        ("redoc", "redoc.standalone.js"),
    ]
    return [f"{p}/{n}" for p, n in wanted if not (STATIC / "vendor" / p / n).is_file()]
