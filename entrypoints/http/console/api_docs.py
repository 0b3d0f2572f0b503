"""``/docs`` (Swagger UI) and ``/redoc``, with their files served by this app, not a CDN: the
pages work without internet. The files are fetched at set-up (scripts/fetch_console_assets.py)."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.responses import HTMLResponse

from entrypoints.http.console.assets import vendor_url

router = APIRouter(include_in_schema=False)

#: Only this site: ReDoc's sidebar would load its logo from its own CDN otherwise. FastAPI's
#: pages start the viewers with an inline script; ReDoc's search runs in a blob worker.
DOCS_CSP = (
    "default-src 'self'; script-src 'self' 'unsafe-inline'; style-src 'self' 'unsafe-inline'; "
    "img-src 'self' data:; worker-src 'self' blob:; connect-src 'self'; frame-ancestors 'none'"
)


def _local_only(page: HTMLResponse) -> HTMLResponse:
    page.headers["Content-Security-Policy"] = DOCS_CSP
    return page


@router.get("/docs")
def swagger_ui() -> HTMLResponse:
    return _local_only(
        get_swagger_ui_html(
            openapi_url="/openapi.json",
            title="aftersales - Swagger UI",
            swagger_js_url=vendor_url("swagger-ui-dist", "swagger-ui-bundle.js"),
            swagger_css_url=vendor_url("swagger-ui-dist", "swagger-ui.css"),
            swagger_favicon_url=vendor_url("swagger-ui-dist", "favicon-32x32.png"),
        )
    )


@router.get("/redoc")
def redoc() -> HTMLResponse:
    return _local_only(
        get_redoc_html(
            openapi_url="/openapi.json",
            title="aftersales - ReDoc",
            redoc_js_url=vendor_url("redoc", "redoc.standalone.js"),
            redoc_favicon_url=vendor_url("swagger-ui-dist", "favicon-32x32.png"),
            with_google_fonts=False,
        )
    )
