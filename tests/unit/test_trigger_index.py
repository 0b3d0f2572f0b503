"""docs/triggers.md is the index ``workflow.trigger_index`` draws from the tables, and every piece
of code it names exists.

When the first test fails after a change to a table, regenerate the document:
``python -m workflow.trigger_index docs/triggers.md``.
"""

from __future__ import annotations

import importlib
import inspect
from pathlib import Path
from typing import Any

import pytest

from workflow import definitions, trigger_index

TRIGGERS_MD = Path(__file__).resolve().parents[2] / "docs" / "triggers.md"


def _resolve(dotted: str) -> Any:
    """The object a dotted path names: the longest importable module, then its attributes."""
    parts = dotted.split(".")
    for split in range(len(parts), 0, -1):
        try:
            found: Any = importlib.import_module(".".join(parts[:split]))
        except ModuleNotFoundError:
            continue
        for attribute in parts[split:]:
            found = getattr(found, attribute)
        return found
    raise ModuleNotFoundError(dotted)


def test_the_committed_index_is_current() -> None:
    # given the committed document
    committed = TRIGGERS_MD.read_text(encoding="utf-8")
    # when the index is drawn again into it
    drawn = trigger_index.embed(committed)
    # then nothing changes
    assert committed == drawn, (
        "docs/triggers.md is stale: python -m workflow.trigger_index docs/triggers.md"
    )


def test_every_trigger_has_a_row_in_the_index() -> None:
    index = trigger_index.markdown()
    for trigger in definitions.TRIGGERS:
        assert f"| `{trigger}` |" in index


NAMED = sorted(
    {step for path in trigger_index.FIRING_PATHS.values() for step in path}
    | set(trigger_index.SIDE_EFFECTS.values())
    | {declared.split()[0] for declared in trigger_index.DECLARED_IN.values()}
    | {"workflow.engine.timer_for"}
)


@pytest.mark.parametrize("dotted", NAMED)
def test_the_code_the_index_names_exists(dotted: str) -> None:
    assert _resolve(dotted) is not None


def test_side_effect_triggers_are_fired_by_their_handler() -> None:
    for trigger, handler in trigger_index.SIDE_EFFECTS.items():
        code = _resolve(handler)
        # The handler names the trigger it fires, or its module's table of them does.
        module = inspect.getmodule(code)
        assert module is not None
        named_in = (inspect.getsource(code), inspect.getsource(module))
        assert any(f'"{trigger}"' in text for text in named_in), (trigger, handler)


def test_embed_refuses_a_document_without_the_block() -> None:
    with pytest.raises(ValueError, match="triggers"):
        trigger_index.embed("# no block here\n")
