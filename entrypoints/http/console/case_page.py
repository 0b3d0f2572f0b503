"""The case page: the order of record, items and refund, the timeline, the current deadline, the
state diagram, and one form per trigger the viewer may fire now (admins also extend the
deadline).

Every form carries the case version the page showed; the service compares it in the
transition's transaction, so acting on a page that is out of date changes nothing and answers
412 "changed since you opened it", as ``If-Match`` does on the API.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Path, Request
from fastapi.responses import Response

from entrypoints.http.auth import require
from entrypoints.http.console.trigger_forms import data_from, form_for
from entrypoints.http.console.web import (
    PREFIX,
    ConsoleError,
    ConsoleRoute,
    Viewer,
    read_form,
    redirect,
    render,
    viewer_of,
)
from entrypoints.http.context import api_of
from entrypoints.http.schemas import MAX_ID
from entrypoints.http.scopes import TokenRole
from workflow import channels, engine
from workflow.diagram import mermaid
from workflow.errors import Conflict, InvalidInput, NotFound
from workflow.queries import waiting_for
from workflow.redaction import masked

router = APIRouter(prefix=PREFIX, route_class=ConsoleRoute, include_in_schema=False)

CaseId = Annotated[int, Path(ge=1, le=MAX_ID)]


def _stale(error: Conflict, expected: int) -> ConsoleError | None:
    if error.current_version is None or error.current_version == expected:
        return None
    return ConsoleError(
        412,
        f"This case changed since you opened it (you saw version {expected}, it is now at "
        f"{error.current_version}). Nothing was done: refresh the page and decide again.",
        "Changed since you opened it",
    )


def _version(form: dict[str, str]) -> int:
    try:
        version = int(form.get("version", ""))
    except ValueError:
        raise ConsoleError(400, "the form lost the case version it was shown at") from None
    if not 0 <= version <= MAX_ID:
        raise ConsoleError(400, "the case version is out of range")
    return version


def _order_of(request: Request, viewer: Viewer, order_id: str) -> dict[str, Any] | None:
    try:
        account = api_of(request).orders.account(order_id, viewer.principal.actor())
    except NotFound:  # cases opened before orders of record, or on an order not imported
        return None
    return {"order": account.order, "account": account}


def _max_extension_hours(request: Request) -> int:
    # The service's configured bound (AFTERSALES_MAX_DEADLINE_EXTENSION), as for the API.
    return int(api_of(request).cases.max_deadline_extension.total_seconds() // 3600)


def case_context(request: Request, viewer: Viewer, case_id: int) -> dict[str, Any]:
    api = api_of(request)
    actor = viewer.principal.actor()
    view = api.cases.get(case_id, actor)
    case = view.case
    history = api.cases.history(case_id, actor)
    allowed = engine.allowed_triggers(case, actor)
    return {
        "case": case,
        "deadline": view.deadline,
        "waits_for": waiting_for(case, view.deadline),
        "order": _order_of(request, viewer, case.order_id),
        "timeline": [(record, masked(record.data)) for record in reversed(history)],
        "forms": [form_for(trigger) for trigger in allowed],
        "diagram": mermaid(case.type, case.state),
        "details": masked(case.details),
        "max_extension_hours": _max_extension_hours(request),
    }


@router.get("/cases/{case_id}")
def case_page(request: Request, case_id: CaseId) -> Response:
    viewer = viewer_of(request)
    return render(request, "case.html", viewer, **case_context(request, viewer, case_id))


@router.post("/cases/{case_id}/fire")
async def fire(request: Request, case_id: CaseId) -> Response:
    viewer = viewer_of(request)
    form = await read_form(request, viewer.binding)
    expected = _version(form)
    trigger = form.get("trigger", "").strip()
    if not trigger:
        raise InvalidInput("choose a trigger", "trigger")
    reason = form.get("reason", "").strip() or None
    api = api_of(request)
    try:
        api.cases.fire(
            case_id,
            trigger,
            viewer.principal.actor(),
            data_from(form, trigger),
            reason,
            expected_version=expected,
            source=channels.console(viewer.principal.token.id),
        )
    except Conflict as error:
        raise _stale(error, expected) or error from None
    return redirect(f"{PREFIX}/cases/{case_id}")


@router.post("/cases/{case_id}/extend")
async def extend(request: Request, case_id: CaseId) -> Response:
    viewer = viewer_of(request)
    form = await read_form(request, viewer.binding)
    require(viewer.principal, TokenRole.ADMIN)
    expected = _version(form)
    try:
        hours = float(form.get("hours", ""))
    except ValueError:
        raise InvalidInput("hours must be a number", "hours") from None
    most = _max_extension_hours(request)
    if not 0 < hours <= most:
        raise InvalidInput(f"hours must be over 0 and at most {most}", "hours")
    try:
        api_of(request).cases.extend_deadline(
            case_id,
            viewer.principal.actor(),
            form.get("reason", ""),
            hours=hours,
            expected_version=expected,
            source=channels.console(viewer.principal.token.id),
        )
    except Conflict as error:
        raise _stale(error, expected) or error from None
    return redirect(f"{PREFIX}/cases/{case_id}")
