"""Operations pages (admins): dead letters to replay or discard with a reason, and the deadlines
that are due or overdue, with how late each one is."""

from __future__ import annotations

import re
from datetime import timedelta
from typing import Annotated

from fastapi import APIRouter, Path, Query, Request
from fastapi.responses import Response

from entrypoints import views
from entrypoints.http.auth import require
from entrypoints.http.console.web import (
    PREFIX,
    ConsoleError,
    ConsoleRoute,
    read_form,
    redirect,
    render,
    viewer_of,
)
from entrypoints.http.context import api_of
from entrypoints.http.schemas import MAX_ID
from entrypoints.http.scopes import TokenRole
from workflow.events.ingestion import IngestStatus
from workflow.model import DeadLetterStatus
from workflow.redaction import masked

router = APIRouter(prefix=PREFIX, route_class=ConsoleRoute, include_in_schema=False)

#: Rows of one page of dead letters or timers.
PAGE = 50
LetterId = Annotated[int, Path(ge=1, le=MAX_ID)]
#: What a resolved letter became, for the page shown after it (``?done=discarded+7``).
_PAST = {"replay": "replayed", "discard": "discarded"}
_DONE = re.compile(r"\A(replayed|discarded) ([0-9]{1,19})\Z")


def _notice(done: str | None) -> str | None:
    found = _DONE.match(done or "")
    return f"Dead letter #{found.group(2)} {found.group(1)}." if found else None


@router.get("/dead-letters")
def dead_letters(
    request: Request,
    status: Annotated[DeadLetterStatus | None, Query()] = DeadLetterStatus.OPEN,
    after: Annotated[int | None, Query(ge=0, le=MAX_ID)] = None,
    done: Annotated[str | None, Query(max_length=100)] = None,
) -> Response:
    viewer = viewer_of(request)
    require(viewer.principal, TokenRole.ADMIN)
    letters = api_of(request).events.dead_letters(status, after, PAGE + 1)
    page = letters[:PAGE]
    next_after = page[-1].id if len(letters) > PAGE else None
    rows = [(letter, masked(letter.envelope)) for letter in page]
    return render(
        request,
        "dead_letters.html",
        viewer,
        rows=rows,
        shown=status,
        statuses=list(DeadLetterStatus),
        next_after=next_after,
        notice=_notice(done),
    )


@router.post("/dead-letters/{letter_id}/{action}")
async def resolve_letter(request: Request, letter_id: LetterId, action: str) -> Response:
    viewer = viewer_of(request)
    form = await read_form(request, viewer.binding)
    require(viewer.principal, TokenRole.ADMIN)
    events = api_of(request).events
    resolver, reason = str(viewer.principal.actor()), form.get("reason", "")
    if action == "replay":
        result = events.replay(letter_id, resolver, reason)
        if result.status is IngestStatus.DEAD_LETTERED:
            raise ConsoleError(
                409,
                f"dead letter {letter_id} still fails ({result.code}): {result.reason}. "
                "It stays open.",
                "The dead letter still cannot apply",
            )
    elif action == "discard":
        events.discard(letter_id, resolver, reason)
    else:
        raise ConsoleError(404, "a dead letter is replayed or discarded")
    return redirect(f"{PREFIX}/dead-letters?done={_PAST[action]}+{letter_id}")


@router.get("/timers")
def timers(
    request: Request,
    within_hours: Annotated[int, Query(ge=0, le=24 * 30)] = 24,
) -> Response:
    viewer = viewer_of(request)
    require(viewer.principal, TokenRole.ADMIN)
    service = api_of(request).cases
    now = service.clock.now()
    due = service.due_timers(now + timedelta(hours=within_hours), limit=PAGE * 4)
    rows = [
        {
            "timer": timer,
            "overdue": timer.due_at <= now,
            "lateness": views.relative(timer.due_at, now),
        }
        for timer in due
    ]
    overdue = sum(1 for row in rows if row["overdue"])
    return render(
        request,
        "timers.html",
        viewer,
        rows=rows,
        within_hours=within_hours,
        overdue=overdue,
        limit=PAGE * 4,
    )
