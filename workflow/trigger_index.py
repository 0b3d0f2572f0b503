"""The trigger index of docs/triggers.md: each trigger's rows, guard, timer and what fires it.

Drawn from the same tables the machines are built from (``definitions``, ``events.mapping``);
the code each firing path runs through is named here once, as dotted paths a test resolves.
"""

from __future__ import annotations

import sys
from pathlib import Path

from workflow import definitions, engine
from workflow.definitions import Rule
from workflow.events.mapping import EVENT_RULES
from workflow.payloads import TRIGGER_DATA
from workflow.states import CaseState, CaseType, Role

#: How a trigger reaches ``engine.fire``, by who fires it: the code in calling order.
FIRING_PATHS: dict[str, tuple[str, ...]] = {
    "person (HTTP, CLI)": (
        "entrypoints.http.cases.fire_trigger",
        "workflow.service.CaseService.fire",
        "workflow.service.CaseService.transition",
        "workflow.engine.fire",
    ),
    "timer": (
        "tasks.timers.sweep_timers_task",
        "workflow.service.CaseService.sweep_timers",
        "workflow.service.CaseService.fire_timers",
        "workflow.engine.fire",
    ),
    "event": (
        "tasks.events.ingest_event_task",
        "workflow.events.ingestion.EventService.ingest",
        "workflow.events.mapping.plan",
        "workflow.service.CaseService.transition",
        "workflow.engine.fire",
    ),
    "side effect": (
        "tasks.effects.book_pickup_task",
        "workflow.effects.EffectService.book_pickup",
        "workflow.service.CaseService.fire",
        "workflow.engine.fire",
    ),
    "follow-up": ("workflow.engine.fire",),
}

#: Where each kind of firing is declared or armed.
DECLARED_IN: dict[str, str] = {
    "timer": "workflow.definitions.TIMERS (armed by workflow.engine.timer_for)",
    "event": "workflow.events.mapping.EVENT_RULES",
    "follow-up": "workflow.definitions.FOLLOW_UPS",
}

#: Triggers a side-effect handler fires with the gateway's answer.
SIDE_EFFECTS: dict[str, str] = {
    "book_pickup": "workflow.effects.EffectService.book_pickup",
    "confirm_refund": "workflow.effects.EffectService.execute_refund",
    "fail_refund": "workflow.effects.EffectService.execute_refund",
    "ship_replacement": "workflow.effects.EffectService.ship_to_buyer",
    "ship_repaired": "workflow.effects.EffectService.ship_to_buyer",
}

#: Roles that fire triggers in person (HTTP or CLI) rather than through events or timers.
PEOPLE = (Role.BUYER, Role.MERCHANT, Role.ADMIN)


def _states(states: tuple[CaseState, ...]) -> str:
    chosen = set(states)
    open_states = set(definitions.OPEN_STATES)
    if chosen == open_states:
        return "any open state"
    if chosen < open_states and len(chosen) > len(open_states) // 2:
        left_out = ", ".join(s.value for s in definitions.OPEN_STATES if s not in chosen)
        return f"any open state but {left_out}"
    return ", ".join(s.value for s in states)


def _row(rule: Rule) -> str:
    roles = "/".join(role.value for role in Role if role in rule.actors)
    text = f"{_states(rule.sources)} → {rule.dest.value}, by {roles}"
    if rule.types != definitions.ALL_TYPES:
        text += f" ({', '.join(t.value for t in CaseType if t in rule.types)})"
    if rule.when:
        text += f" if `{rule.when}`"
    return text


def _deadlines(trigger: str) -> list[str]:
    """The deadlines past which this trigger is refused (``engine._check_deadline``)."""
    found: list[str] = []
    for case_type in CaseType:
        rules = definitions.rules_for(case_type)
        for rule in rules:
            if rule.trigger != trigger:
                continue
            for source in rule.sources:
                for spec in definitions.TIMERS.get(source, ()):
                    if case_type not in spec.types or spec.binds not in rule.actors:
                        continue
                    timeout = {r.dest for r in rules if r.trigger == spec.trigger}
                    if spec.trigger != trigger and rule.dest not in timeout:
                        found.append(spec.kind)
    return list(dict.fromkeys(found))


def _guard(trigger: str, rules: list[Rule]) -> str:
    parts = []
    for name in dict.fromkeys(rule.when for rule in rules if rule.when):
        parts.append(f"`{name}`: `engine.{engine.CONDITIONS[name].__name__}`")
    if trigger in definitions.REASON_REQUIRED:
        parts.append("a reason")
    if trigger in TRIGGER_DATA:
        parts.append(f"data `payloads.{TRIGGER_DATA[trigger].__name__}`")
    parts.extend(f"not past `{kind}`" for kind in _deadlines(trigger))
    return "; ".join(parts)


def _timers(trigger: str) -> str:
    found = []
    for state, specs in definitions.TIMERS.items():
        for spec in specs:
            if spec.trigger == trigger:
                found.append(f"`{spec.kind}` in {state.value}")
    return "<br>".join(dict.fromkeys(found))


def _fired_by(trigger: str, rules: list[Rule]) -> str:
    roles = {role for rule in rules for role in rule.actors}
    sources = []
    people = [role.value for role in PEOPLE if role in roles]
    if people:
        sources.append("person (HTTP, CLI): " + "/".join(people))
    if any(spec.trigger == trigger for specs in definitions.TIMERS.values() for spec in specs):
        sources.append("timer")
    events = [
        rule.type.value
        for rule in EVENT_RULES.values()
        if rule.fallback == trigger or any(trigger in route.triggers for route in rule.routes)
    ]
    if events:
        sources.append("event " + ", ".join(f"`{event}`" for event in events))
    for (case_type, state), follow_up in definitions.FOLLOW_UPS.items():
        if follow_up == trigger:
            sources.append(f"follow-up on entering {state.value} ({case_type.value})")
    if trigger in SIDE_EFFECTS:
        sources.append(f"side effect `{SIDE_EFFECTS[trigger].removeprefix('workflow.')}`")
    return "<br>".join(sources)


def markdown() -> str:
    """The trigger table and the firing paths, as docs/triggers.md embeds them."""
    lines = [
        "| trigger | rows: from → to, by whom | guard | timer | fired by |",
        "|---|---|---|---|---|",
    ]
    for trigger in definitions.TRIGGERS:
        rules = [rule for rule in definitions.RULES if rule.trigger == trigger]
        rows = "<br>".join(_row(rule) for rule in rules)
        cells = [f"`{trigger}`", rows, _guard(trigger, rules), _timers(trigger)]
        lines.append("| " + " | ".join([*cells, _fired_by(trigger, rules)]) + " |")
    lines += ["", "| fired by | declared in | code, in calling order |", "|---|---|---|"]
    for kind, path in FIRING_PATHS.items():
        declared = f"`{DECLARED_IN[kind]}`" if kind in DECLARED_IN else ""
        code = " → ".join(f"`{step}`" for step in path)
        lines.append(f"| {kind} | {declared} | {code} |")
    return "\n".join(lines) + "\n"


#: The markers around the generated tables in docs/triggers.md.
BEGIN, END = "<!-- triggers -->\n", "<!-- /triggers -->\n"


def embed(document: str) -> str:
    """``document`` with the text between its markers replaced by ``markdown()``."""
    head, found, rest = document.partition(BEGIN)
    _old, found_end, tail = rest.partition(END)
    if not (found and found_end):
        raise ValueError(f"no {BEGIN.strip()} ... {END.strip()} block")
    return head + BEGIN + markdown() + END + tail


if __name__ == "__main__":
    for name in sys.argv[1:]:
        path = Path(name)
        path.write_text(embed(path.read_text(encoding="utf-8")), encoding="utf-8")
