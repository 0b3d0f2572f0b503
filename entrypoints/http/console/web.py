"""What every console page shares: the viewer of a request, forms with their CSRF check, the
templates, and errors shown as pages.

The viewer is the API's ``Principal`` for the token behind the session cookie, so the console
acts with exactly the API's authorization: the engine's ownership checks, ``require`` for
roles. Errors map to the same statuses as the API's problems (``problems.response_for``) and
are shown as a page instead of JSON.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, quote
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import jinja2
from fastapi import Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.routing import APIRoute
from fastapi.templating import Jinja2Templates
from starlette.exceptions import HTTPException as StarletteHTTPException

from entrypoints import views
from entrypoints.http.auth import Principal
from entrypoints.http.console.session import (
    PRESESSION_COOKIE,
    SESSION_COOKIE,
    Session,
    SessionSigner,
)
from entrypoints.http.context import ApiContext, api_of
from entrypoints.http.problems import PROBLEM_TYPES, response_for
from workflow.errors import AftersalesError, Phrase

#: Where the console lives in the app.
PREFIX = "/console"
TEMPLATES = Path(__file__).parent / "templates"
#: Fields and bytes of one form; the largest (a trigger with its data) has about a dozen.
MAX_FIELDS = 200
MAX_VALUE = 10_000

templates = Jinja2Templates(
    env=jinja2.Environment(loader=jinja2.FileSystemLoader(TEMPLATES), autoescape=True)
)
templates.env.filters["yuan"] = views.yuan
templates.env.filters["json"] = lambda value: json.dumps(value, ensure_ascii=False, indent=1)
templates.env.globals["prefix"] = PREFIX
templates.env.globals["relative"] = views.relative

#: Headers of every console page: nothing from elsewhere, no framing, not cached.
PAGE_HEADERS = {
    # Mermaid writes style elements into its SVG, hence 'unsafe-inline' for styles only.
    "Content-Security-Policy": "default-src 'self'; script-src 'self'; "
    "style-src 'self' 'unsafe-inline'; img-src 'self' data:; frame-ancestors 'none'; "
    "form-action 'self'; base-uri 'none'",
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
}


class ConsoleError(Exception):
    """A refusal of the console itself, shown as a page with ``status``."""

    def __init__(self, status: int, detail: str, title: str | None = None) -> None:
        super().__init__(detail)
        self.status, self.detail, self.title = status, detail, title


class Form(dict[str, str]):
    """A submitted form: the last value of each field, and ``all`` of a repeated one."""

    def __init__(self, pairs: list[tuple[str, str]]) -> None:
        super().__init__(pairs)
        self._pairs = pairs

    def all(self, name: str) -> list[str]:
        return [value for key, value in self._pairs if key == name]


class SignInRequired(Exception):
    """No live session: the browser goes to the sign-in page."""


def signer_of(request: Request) -> SessionSigner:
    signer: SessionSigner = request.app.state.console_signer
    return signer


@dataclass(frozen=True)
class Viewer:
    """The signed-in person of a request: the API's principal, and how pages show things."""

    principal: Principal
    session: Session
    #: The session cookie's value: what this viewer's CSRF token is bound to.
    binding: str
    csrf: str
    zone: ZoneInfo

    @property
    def is_admin(self) -> bool:
        return self.principal.is_admin

    @property
    def label(self) -> str:
        return self.principal.token.scope

    def time(self, moment: datetime | None) -> str:
        return views.local(moment, self.zone)


def zone_named(name: str | None, fallback: str) -> ZoneInfo:
    try:
        # Zone names are short ("America/Argentina/ComodRivadavia" is among the longest).
        return ZoneInfo(name) if name and len(name) <= 64 else ZoneInfo(fallback)
    except (ZoneInfoNotFoundError, ValueError):
        return ZoneInfo(fallback)


def platform_zone(api: ApiContext) -> str:
    return api.cases.policy.timezone


def viewer_of(request: Request) -> Viewer:
    """The request's viewer, or ``SignInRequired``; the token is checked again (and its use
    noted, at most once a minute) every time."""
    api = api_of(request)
    now = api.clock.now()
    cookie = request.cookies.get(SESSION_COOKIE)
    session = signer_of(request).load(cookie, now)
    if session is None or cookie is None:
        raise SignInRequired()
    token = api.tokens.authenticate_hash(session.token_hash)
    if token is None or token.expired(now):  # revoked or expired since
        raise SignInRequired()
    if api.rate_limiter.take(token.id) is not None:
        raise ConsoleError(429, "too many requests with this token; wait a minute")
    # As the API does: `tokens list` shows when a token was last used, console or not.
    api.tokens.record_use(token, now)
    principal = Principal(token)
    request.state.principal = principal
    return Viewer(
        principal=principal,
        session=session,
        binding=cookie,
        csrf=signer_of(request).csrf_token(cookie),
        zone=zone_named(session.zone, platform_zone(api)),
    )


async def read_form(request: Request, binding: str | None) -> Form:
    """The urlencoded form of a POST, once its CSRF token matched ``binding``.

    A form without the token, or with another session's, is refused with 403 before anything
    in it is looked at.
    """
    media = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
    if media != "application/x-www-form-urlencoded":
        raise ConsoleError(415, "send the page's form (application/x-www-form-urlencoded)")
    body = await request.body()
    try:
        pairs = parse_qsl(
            body.decode("utf-8"),
            keep_blank_values=True,
            strict_parsing=False,
            max_num_fields=MAX_FIELDS,
        )
    except (UnicodeDecodeError, ValueError):
        raise ConsoleError(400, "the form is not valid UTF-8 or has too many fields") from None
    for name, value in pairs:
        if len(value) > MAX_VALUE or "\x00" in value or "\x00" in name:
            raise ConsoleError(422, f"field {name[:40]!r} is too long or has NUL characters")
    form = Form(pairs)
    if not signer_of(request).csrf_valid(binding, form.get("csrf_token")):
        raise ConsoleError(
            403,
            "this form's CSRF token is missing or does not match your session; "
            "reload the page and send it again",
            "Form refused",
        )
    return form


def presession_of(request: Request) -> str | None:
    return request.cookies.get(PRESESSION_COOKIE)


def render(
    request: Request,
    template: str,
    viewer: Viewer | None,
    status: int = 200,
    **context: Any,
) -> HTMLResponse:
    response: HTMLResponse = templates.TemplateResponse(
        request,
        template,
        {"viewer": viewer, "now": api_of(request).clock.now(), **context},
        status_code=status,
    )
    response.headers.update(PAGE_HEADERS)
    return response


def redirect(path: str) -> RedirectResponse:
    """After a POST: 303, so a reload does not send the form again."""
    return RedirectResponse(path, status_code=303, headers={"Cache-Control": "no-store"})


_CASE_PAGE = re.compile(rf"{PREFIX}/cases/\d+")
#: Refusals of a case's form after which the case is worth another look (not a 403).
_BACK_TO_CASE = frozenset({409, 412, 422})


def _error_page(request: Request, status: int, title: str, detail: str | Phrase) -> Response:
    """``detail``: a ``Phrase`` (a refusal's line, with its instants) shows them in the
    viewer's zone, as the pages show times."""
    try:
        viewer: Viewer | None = viewer_of(request)
    except (SignInRequired, ConsoleError):
        viewer = None
    if isinstance(detail, Phrase):
        detail = detail.render(viewer.time) if viewer is not None else str(detail)
    # A case's refused form leads back to the case: /console/cases/7/fire -> /console/cases/7
    # (to refresh it after a 412, or to see what it allows now after a 409 or a 422).
    form_page = request.url.path.rsplit("/", 1)[0] if request.method == "POST" else ""
    case_page = form_page if _CASE_PAGE.fullmatch(form_page) and status in _BACK_TO_CASE else None
    return render(
        request,
        "error.html",
        viewer,
        status,
        title=title,
        detail=detail,
        response_status=status,
        case_page=case_page,
    )


def error_response(request: Request, error: Exception) -> Response | None:
    """The page for an error a console route may raise; None for a bug (then a 500)."""
    if isinstance(error, SignInRequired):
        wanted = request.url.path if request.method == "GET" else PREFIX
        return redirect(f"{PREFIX}/sign-in?next={quote(wanted, safe='/')}")
    if isinstance(error, ConsoleError):
        title = error.title or _title(error.status)
        return _error_page(request, error.status, title, error.detail)
    if isinstance(error, StarletteHTTPException):
        return _error_page(request, error.status_code, _title(error.status_code), "")
    problem = response_for(error, request.url.path)
    if problem is None:
        return None
    body = json.loads(bytes(problem.body))
    detail = error.phrase if isinstance(error, AftersalesError) else body.get("detail") or ""
    return _error_page(request, problem.status_code, body["title"], detail)


def _title(status: int) -> str:
    for kind in PROBLEM_TYPES.values():
        if kind.status == status:
            return kind.title
    return "Error"


class ConsoleRoute(APIRoute):
    """A console route: its errors become pages (403, 404, 412...) instead of problem JSON."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def handle(request: Request) -> Response:
            try:
                return await handler(request)
            except Exception as error:
                page = error_response(request, error)
                if page is None:
                    raise
                return page

        return handle
