"""Sign-in with a bearer token pasted once, and sign-out.

The token is checked by the API's token store, then forgotten: the session cookie keeps its
hash (``session``). Producer tokens have no console (they act through events only). A wrong
token counts against the client address as a failed API authentication does.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Request
from fastapi.responses import Response

from entrypoints.http.console.session import (
    PRESESSION_COOKIE,
    SESSION_COOKIE,
    new_presession,
    new_session,
)
from entrypoints.http.console.web import (
    PREFIX,
    ConsoleError,
    ConsoleRoute,
    SignInRequired,
    platform_zone,
    presession_of,
    read_form,
    redirect,
    render,
    signer_of,
    viewer_of,
    zone_named,
)
from entrypoints.http.context import api_of
from entrypoints.http.scopes import TokenRole
from persistence.tokens import hash_secret

router = APIRouter(prefix=PREFIX, route_class=ConsoleRoute, include_in_schema=False)

NextPath = Annotated[str, Query(max_length=300)]


def _safe_next(path: str) -> str:
    # Only a console page of this site: never an open redirect to another host.
    if path.startswith(PREFIX) and not path.startswith("//") and "\\" not in path:
        return path
    return PREFIX


def _cookie_args(request: Request, max_age: int) -> dict[str, object]:
    return {
        "max_age": max_age,
        "path": PREFIX,
        "httponly": True,
        "samesite": "strict",
        "secure": request.url.scheme == "https",
    }


@router.get("/sign-in")
def sign_in_page(request: Request, next: NextPath = PREFIX) -> Response:
    try:
        viewer_of(request)
        return redirect(_safe_next(next))
    except (SignInRequired, ConsoleError):
        pass
    presession = presession_of(request) or new_presession()
    csrf = signer_of(request).csrf_token(presession)
    response = render(request, "sign_in.html", None, csrf=csrf, next=_safe_next(next), error=None)
    response.set_cookie(PRESESSION_COOKIE, presession, **_cookie_args(request, 3600))  # type: ignore[arg-type]
    return response


@router.post("/sign-in")
async def sign_in(request: Request) -> Response:
    form = await read_form(request, presession_of(request))
    api = api_of(request)
    secret = form.get("token", "").strip()
    target = _safe_next(form.get("next", PREFIX))
    token = api.tokens.authenticate(secret) if secret else None
    problem = None
    if token is not None and token.expired(api.clock.now()):
        token = None
    if token is None:
        client = request.client.host if request.client else "unknown"
        if api.auth_failures.take(client) is not None:
            raise ConsoleError(429, "too many failed sign-ins from this address; wait a minute")
        problem = "unknown, revoked or expired token"
    elif token.role == TokenRole.PRODUCER.value:
        problem = "a producer token sends events; it has no console"
    if token is None or problem is not None:
        csrf = signer_of(request).csrf_token(presession_of(request) or "")
        return render(request, "sign_in.html", None, 401, csrf=csrf, next=target, error=problem)
    zone = zone_named(form.get("zone"), platform_zone(api)).key
    hours = api.settings.console_session_hours
    session = new_session(hash_secret(secret), api.clock.now(), hours, zone)
    response = redirect(target)
    response.set_cookie(
        SESSION_COOKIE,
        signer_of(request).dump(session),
        **_cookie_args(request, int(hours * 3600)),  # type: ignore[arg-type]
    )
    response.delete_cookie(PRESESSION_COOKIE, path=PREFIX)
    return response


@router.post("/sign-out")
async def sign_out(request: Request) -> Response:
    viewer = viewer_of(request)
    await read_form(request, viewer.binding)
    response = redirect(f"{PREFIX}/sign-in")
    response.delete_cookie(SESSION_COOKIE, path=PREFIX)
    return response
