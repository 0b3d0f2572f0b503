"""``aftersales case``: submit, inspect and move cases.

The service, its views and rich are imported inside each command (see ``main``): ``--help``
and the other command groups start without them.
"""

from __future__ import annotations

from typing import Annotated

import typer

from entrypoints.cli.common import JsonFlag, new_console, print_json, state_of
from entrypoints.cli.inputs import (
    AfterId,
    CaseId,
    Version,
    key_option,
    parse_data,
    parse_json,
    parse_time,
    read_text,
    reason_option,
)
from entrypoints.terminal import printable
from workflow import channels
from workflow.model import Actor
from workflow.states import CaseState, CaseType

#: Cases per page of ``case list``.
DEFAULT_PAGE = 20
#: ``--hours`` of an extension: the most the service takes in any configuration (a year,
#: ``workflow.payloads.Deadline``); the configured longest extension
#: (``AFTERSALES_MAX_DEADLINE_EXTENSION``, 30 days by default) is the service's to apply.
MAX_EXTENSION_HOURS = 365 * 24

case_app = typer.Typer(no_args_is_help=True, help="Submit, inspect and move cases.")

ActorOption = Annotated[
    str, typer.Option("--actor", help="Who acts: ROLE or ROLE:ID, e.g. merchant:m1, admin.")
]
ScopeOption = Annotated[
    str | None,
    typer.Option("--actor", help="See the case as this actor (a buyer sees only its own)."),
]


@case_app.command("submit")
def case_submit(
    ctx: typer.Context,
    source: Annotated[
        str | None,
        typer.Argument(metavar="FILE", help="Application JSON; - or nothing reads stdin."),
    ] = None,
    idempotency_key: Annotated[
        str | None,
        key_option("Retrying with the same key returns the first case, not a second."),
    ] = None,
    actor: Annotated[
        str | None, typer.Option("--actor", help="Submitting actor (default: the buyer).")
    ] = None,
    json_output: JsonFlag = False,
) -> None:
    """Apply for after-sales with an application JSON document."""
    from entrypoints import render, views

    state = state_of(ctx, json_output)
    text, name = read_text(source)
    raw = parse_json(text, name)
    service = state.service()
    view = service.submit(
        raw, Actor.parse(actor) if actor else None, idempotency_key, source=channels.CLI
    )
    if state.json:
        print_json(views.view_json(view))
    else:
        new_console().print(render.case_card(view, service.clock.now(), state.zone()))


@case_app.command("show")
def case_show(
    ctx: typer.Context,
    case_id: CaseId,
    actor: ScopeOption = None,
    history: Annotated[bool, typer.Option("--history", help="Add the timeline.")] = False,
    json_output: JsonFlag = False,
) -> None:
    """One case: state, deadline, refund."""
    from entrypoints import render, views

    state = state_of(ctx, json_output)
    service = state.service()
    who = Actor.parse(actor) if actor else None
    view = service.get(case_id, who)
    records = service.history(case_id, who) if history else []
    if state.json:
        shown = views.view_json(view)
        if history:
            shown["history"] = [views.record_json(r) for r in records]
        print_json(shown)
        return
    console = new_console()
    console.print(render.case_card(view, service.clock.now(), state.zone()))
    if history:
        console.print(render.history_timeline(records, state.zone()))


@case_app.command("list")
def case_list(
    ctx: typer.Context,
    state_filter: Annotated[CaseState | None, typer.Option("--state")] = None,
    type_filter: Annotated[CaseType | None, typer.Option("--type")] = None,
    merchant: Annotated[str | None, typer.Option(help="Merchant id.")] = None,
    buyer: Annotated[str | None, typer.Option(help="Buyer id.")] = None,
    order: Annotated[str | None, typer.Option(help="Order id.")] = None,
    limit: Annotated[int, typer.Option(min=1, max=500, help="Cases per page.")] = DEFAULT_PAGE,
    after: AfterId = None,
    actor: ScopeOption = None,
    json_output: JsonFlag = False,
) -> None:
    """Cases, oldest first, a page at a time."""
    from rich.text import Text

    from entrypoints import render, views
    from workflow.ports import CaseQuery

    state = state_of(ctx, json_output)
    service = state.service()
    query = CaseQuery(
        state=state_filter,
        type=type_filter,
        merchant_id=merchant,
        buyer_id=buyer,
        order_id=order,
        after_id=after,
        # One more than shown tells whether a next page exists without a count query.
        limit=limit + 1,
    )
    found = service.list(query, Actor.parse(actor) if actor else None)
    page = found[:limit]
    next_after = page[-1].case.id if len(found) > limit else None
    if state.json:
        print_json({"cases": [views.view_json(v) for v in page], "next_after": next_after})
        return
    console = new_console()
    if not page:
        console.print("no cases" + (" after that id" if after else ""))
        return
    console.print(render.case_table(page, service.clock.now(), state.zone(), console.width))
    if next_after is not None:
        filters = {
            "--state": state_filter,
            "--type": type_filter,
            "--merchant": merchant,
            "--buyer": buyer,
            "--order": order,
            "--actor": actor,
            "--limit": limit if limit != DEFAULT_PAGE else None,
            "--after": next_after,
        }
        hint = " ".join(
            ["aftersales case list", *(f"{k} {v}" for k, v in filters.items() if v is not None)]
        )
        console.print(Text(printable(f"more cases: {hint}"), style="dim"))


@case_app.command("fire")
def case_fire(
    ctx: typer.Context,
    case_id: CaseId,
    trigger: Annotated[str, typer.Argument(metavar="TRIGGER")],
    actor: ActorOption,
    reason: Annotated[str | None, reason_option("Why; admins and rejections need one.")] = None,
    data: Annotated[
        str | None,
        typer.Option(metavar="JSON", help="Trigger data as a JSON object, or @FILE."),
    ] = None,
    idempotency_key: Annotated[
        str | None, key_option("A retry with the same key does not fire twice.")
    ] = None,
    expected_version: Version = None,
    json_output: JsonFlag = False,
) -> None:
    """Fire a trigger on a case as an actor (see `case triggers` for what is allowed)."""
    from entrypoints import render, views
    from workflow.service import CaseView

    state = state_of(ctx, json_output)
    payload = parse_data(data)
    who = Actor.parse(actor)
    service = state.service()
    result = service.fire(
        case_id,
        trigger,
        who,
        payload,
        reason,
        idempotency_key,
        expected_version,
        source=channels.CLI,
    )
    if state.json:
        print_json(views.fire_json(result))
        return
    console = new_console()
    console.print(render.fired_summary(result.records, result.replayed))
    shown = CaseView(result.case, result.deadline)
    console.print(render.case_card(shown, service.clock.now(), state.zone()))


@case_app.command("triggers")
def case_triggers(
    ctx: typer.Context,
    case_id: CaseId,
    actor: ActorOption,
    json_output: JsonFlag = False,
) -> None:
    """The triggers this actor may fire on the case now."""
    from rich.text import Text

    from entrypoints import render

    state = state_of(ctx, json_output)
    who = Actor.parse(actor)
    service = state.service()
    names = service.allowed_triggers(case_id, who)
    if state.json:
        print_json(names)
        return
    case = service.get(case_id, who).case
    console = new_console()
    prefix = Text.assemble(
        f"case {case_id} is ", render.state_text(case.state), f"; {printable(str(who))} "
    )
    if names:
        console.print(prefix + Text("may fire: ") + Text(", ".join(names), style="bold"))
    else:
        console.print(prefix + Text("may fire nothing now"))


@case_app.command("history")
def case_history(
    ctx: typer.Context,
    case_id: CaseId,
    actor: ScopeOption = None,
    json_output: JsonFlag = False,
) -> None:
    """Every transition of the case, oldest first."""
    from entrypoints import render, views

    state = state_of(ctx, json_output)
    service = state.service()
    records = service.history(case_id, Actor.parse(actor) if actor else None)
    if state.json:
        print_json([views.record_json(r) for r in records])
        return
    new_console().print(render.history_timeline(records, state.zone()))


@case_app.command("extend-deadline")
def case_extend_deadline(
    ctx: typer.Context,
    case_id: CaseId,
    actor: ActorOption,
    reason: Annotated[str, reason_option("Why (holiday, dispute); kept in the history.")],
    until: Annotated[str | None, typer.Option(metavar="ISO8601", help="The new due time.")] = None,
    hours: Annotated[
        float | None,
        typer.Option(min=0, max=MAX_EXTENSION_HOURS, help="Hours added to the current due time."),
    ] = None,
    json_output: JsonFlag = False,
) -> None:
    """Move the case's current deadline later (admins only)."""
    from entrypoints import render, views
    from workflow.service import CaseView

    state = state_of(ctx, json_output)
    who = Actor.parse(actor)
    new_due = parse_time(until, "--until") if until is not None else None
    service = state.service()
    result = service.extend_deadline(
        case_id, who, reason, until=new_due, hours=hours, source=channels.CLI
    )
    if state.json:
        print_json(views.fire_json(result))
        return
    console = new_console()
    console.print(render.fired_summary(result.records, result.replayed))
    console.print(
        render.case_card(CaseView(result.case, result.deadline), service.clock.now(), state.zone())
    )
