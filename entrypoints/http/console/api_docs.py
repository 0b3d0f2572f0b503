"""``/docs`` (Swagger UI) and ``/redoc``, with their files served by this app, not a CDN: the
pages work without internet. The files are fetched at set-up (scripts/fetch_console_assets.py)."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.responses import HTMLResponse

from entrypoints.http.console.assets import vendor_url

router = APIRouter(include_in_schema=False)


@router.get("/docs")
def swagger_ui() -> HTMLResponse:
    return get_swagger_ui_html(
        openapi_url="/openapi.json",
        title="aftersales - Swagger UI",
        swagger_js_url=vendor_url("swagger-ui-dist", "swagger-ui-bundle.js"),
        swagger_css_url=vendor_url("swagger-ui-dist", "swagger-ui.css"),
        swagger_favicon_url=vendor_url("swagger-ui-dist", "favicon-32x32.png"),
    )


@router.get("/redoc")
def redoc() -> HTMLResponse:
    return get_redoc_html(
        openapi_url="/openapi.json",
        title="aftersales - ReDoc",
        redoc_js_url=vendor_url("redoc", "redoc.standalone.js"),
        redoc_favicon_url=vendor_url("swagger-ui-dist", "favicon-32x32.png"),
        with_google_fonts=False,
    )
