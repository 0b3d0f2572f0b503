"""The published contract: the JSON Schema file, the mapping table of docs/events.md, examples."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from pydantic import ValidationError

from workflow import definitions
from workflow.events.envelope import Envelope, EventType
from workflow.events.mapping import CONDITIONS, EVENT_RULES, mapping_markdown
from workflow.events.schema import event_schema, schema_text

DOCS = Path(__file__).resolve().parents[2] / "docs"


def test_the_committed_schema_is_current() -> None:
    committed = (DOCS / "event.schema.json").read_text(encoding="utf-8")
    assert committed == schema_text(), (
        "docs/event.schema.json is stale: aftersales events schema > docs/event.schema.json"
    )


def test_the_schema_lists_every_type_and_needs_a_case_reference() -> None:
    schema = event_schema()
    assert schema["$defs"]["EventType"]["enum"] == [t.value for t in EventType]
    assert schema["additionalProperties"] is False
    assert set(schema["required"]) == {"event_id", "source", "type", "occurred_at"}
    assert [option["required"] for option in schema["anyOf"]] == [
        ["case_id"],
        ["order_id"],
        ["tracking_no"],
    ]


def test_the_mapping_table_of_the_docs_is_current() -> None:
    text = (DOCS / "events.md").read_text(encoding="utf-8")
    block = re.search(r"<!-- mapping -->\n(.*?)<!-- /mapping -->", text, re.S)
    assert block is not None
    assert block.group(1) == mapping_markdown(), (
        "docs/events.md's mapping is stale: paste the output of `aftersales events mapping`"
    )


def _examples() -> list[str]:
    text = (DOCS / "events.md").read_text(encoding="utf-8")
    found = []
    for block in re.findall(r"```json\n(.*?)```", text, re.S):
        if block.lstrip().startswith("{\n"):
            found.append(block)
        else:
            found.extend(line for line in block.splitlines() if line.strip())
    return found


@pytest.mark.parametrize("example", _examples())
def test_the_examples_of_the_docs_are_valid_envelopes(example: str) -> None:
    Envelope.model_validate(json.loads(example))


def test_every_type_is_documented() -> None:
    text = (DOCS / "events.md").read_text(encoding="utf-8")
    for event_type in EventType:
        short = "." + event_type.value.split(".", 1)[1]
        assert event_type.value in text or short in text, event_type


def test_every_rule_fires_triggers_its_role_may_fire() -> None:
    for rule in EVENT_RULES.values():
        triggers = {rule.fallback, *(t for route in rule.routes for t in route.triggers)}
        for trigger in triggers:
            assert any(r.trigger == trigger and rule.role in r.actors for r in definitions.RULES), (
                rule.type,
                trigger,
            )
        for route in rule.routes:
            assert route.when is None or route.when in CONDITIONS
            assert route.triggers or route.note, f"{rule.type}: an ignore says why"


@pytest.mark.parametrize(
    "change",
    [
        {"extra": 1},
        {"occurred_at": "2026-11-20T10:00:00"},
        {"type": "parcel.teleported"},
        {"case_id": None},
        {"event_id": "has space"},
    ],
)
def test_the_envelope_refuses(change: dict[str, object]) -> None:
    envelope = {
        "event_id": "e-1",
        "source": "sf-express",
        "type": "parcel.lost",
        "occurred_at": "2026-11-20T10:00:00+08:00",
        "case_id": 1,
    }
    with pytest.raises(ValidationError):
        Envelope.model_validate({**envelope, **change})
