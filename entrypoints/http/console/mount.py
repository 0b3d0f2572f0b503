"""``install_console(app, settings)``: the console's pages, its static files, and local /docs
and /redoc, on the API's app."""

from __future__ import annotations

import logging

from fastapi import APIRouter, FastAPI
from fastapi.responses import Response
from fastapi.staticfiles import StaticFiles
from starlette.routing import BaseRoute

from config.settings import ApiSettings
from entrypoints.http.console import (
    api_docs,
    bulk,
    case_page,
    figures,
    operations,
    queue,
    signin,
)
from entrypoints.http.console.assets import STATIC, STATIC_URL, missing_vendor_files
from entrypoints.http.console.session import SessionSigner
from entrypoints.http.console.web import PREFIX, ConsoleError, ConsoleRoute

logger = logging.getLogger("aftersales.console")


#: The console's pages and local /docs and /redoc, in the order they are included.
PAGES = tuple(
    module.router for module in (signin, queue, case_page, bulk, operations, figures, api_docs)
)


def install_console(app: FastAPI, settings: ApiSettings) -> None:
    secret = settings.console_secret
    key = secret.get_secret_value().encode("utf-8") if secret is not None else None
    app.state.console_signer = SessionSigner(key)
    missing = missing_vendor_files()
    if missing:
        logger.warning(
            "console assets missing (%s): run scripts/fetch_console_assets.py", ", ".join(missing)
        )
    for router in PAGES:
        app.include_router(router)
    app.mount(STATIC_URL, StaticFiles(directory=STATIC), name="console-static")
    # Last: any other /console path is the console's 404 page, not the API's problem JSON.
    app.include_router(fallback)


def console_routes() -> list[BaseRoute]:
    """The pages ``install_console`` adds, in the order the router tries them, for the ``Gate``
    (which answers OPTIONS and 405 with the methods of the paths it knows). Not the static
    files nor the fallback: it would add its GET and POST to every console path's ``Allow``;
    the Gate passes paths it does not know on to the router."""
    return [route for router in PAGES for route in router.routes]


fallback = APIRouter(prefix=PREFIX, route_class=ConsoleRoute, include_in_schema=False)


@fallback.api_route("/{rest:path}", methods=["GET", "POST"])
def no_such_page(rest: str) -> Response:
    raise ConsoleError(404, f"there is no console page {rest[:80]!r}")
