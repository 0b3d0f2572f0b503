"""Bulk actions from the queue: approve, or confirm receipt of, the selected cases.

Each case is its own transition (its own transaction, at the version the queue showed), so one
refusal leaves the others applied; the result page says, per case, applied (and the new state)
or refused with the rule or reason the engine gave.
"""

from __future__ import annotations

from dataclasses import dataclass

from fastapi import APIRouter, Request
from fastapi.responses import Response

from entrypoints.http.console.web import (
    PREFIX,
    ConsoleError,
    ConsoleRoute,
    Viewer,
    read_form,
    render,
    viewer_of,
)
from entrypoints.http.context import api_of
from entrypoints.http.schemas import MAX_ID
from workflow import channels
from workflow.errors import AftersalesError, Conflict, PolicyRefusal

router = APIRouter(prefix=PREFIX, route_class=ConsoleRoute, include_in_schema=False)

#: The triggers a queue may fire in bulk: a merchant's two routine answers.
BULK_TRIGGERS = ("approve", "confirm_receipt")
#: Cases one bulk action may select (one page of the queue at most).
MAX_SELECTED = 100


@dataclass(frozen=True)
class BulkResult:
    case_id: int
    applied: bool
    #: The state after, when applied; else the refusal.
    outcome: str
    #: The refusal's rule or error code (``policy-refusal``'s rule, ``forbidden``, ...).
    rule: str | None = None


def _selected(values: list[str]) -> list[tuple[int, int | None]]:
    """``case`` fields: ``ID`` or ``ID@VERSION`` (the version the queue showed)."""
    selected: list[tuple[int, int | None]] = []
    for value in values:
        case_text, _, version_text = value.partition("@")
        if not case_text.isdigit() or (version_text and not version_text.isdigit()):
            raise ConsoleError(400, f"{value[:30]!r} is not a case of the queue")
        case_id = int(case_text)
        version = int(version_text) if version_text else None
        if not 1 <= case_id <= MAX_ID or (version is not None and version > MAX_ID):
            raise ConsoleError(400, f"case {value[:30]!r} is out of range")
        selected.append((case_id, version))
    return list(dict.fromkeys(selected))


def _refusal(error: AftersalesError, case_id: int, viewer: Viewer) -> BulkResult:
    shown = error.phrase.render(viewer.time)  # its times in the viewer's zone, as the pages
    if isinstance(error, PolicyRefusal):
        return BulkResult(case_id, False, shown, error.rule)
    if isinstance(error, Conflict):
        return BulkResult(case_id, False, f"changed since the queue was shown: {shown}", "stale")
    return BulkResult(case_id, False, shown, error.code)


@router.post("/bulk")
async def bulk(request: Request) -> Response:
    viewer = viewer_of(request)
    form = await read_form(request, viewer.binding)
    trigger = form.get("trigger", "")
    if trigger not in BULK_TRIGGERS:
        raise ConsoleError(422, f"a bulk action is one of: {', '.join(BULK_TRIGGERS)}")
    selected = _selected(form.all("case"))
    if not selected:
        raise ConsoleError(422, "select at least one case in the queue")
    if len(selected) > MAX_SELECTED:
        raise ConsoleError(422, f"select at most {MAX_SELECTED} cases at once")
    reason = form.get("reason", "").strip() or None
    service = api_of(request).cases
    actor = viewer.principal.actor()
    results: list[BulkResult] = []
    for case_id, version in selected:
        try:
            fired = service.fire(
                case_id,
                trigger,
                actor,
                None,
                reason,
                expected_version=version,
                source=channels.console(viewer.principal.token.id),
            )
        except AftersalesError as error:
            results.append(_refusal(error, case_id, viewer))
            continue
        results.append(BulkResult(case_id, True, fired.case.state.value))
    applied = sum(result.applied for result in results)
    return render(request, "bulk.html", viewer, trigger=trigger, results=results, applied=applied)
