"""README.md's "Using it" walk-through works today, as written: every command, in order, on the
system clock (no ``--now``), on a fresh database; the samples it imports are dated from now."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

from .support import CliFn

README = Path(__file__).resolve().parents[2] / "README.md"


def walkthrough() -> list[list[str]]:
    """The ``aftersales`` commands of the first shell block under "## Using it", comments off."""
    text = README.read_text(encoding="utf-8")
    section = text.split("## Using it", 1)[1]
    block = re.search(r"```sh\n(.*?)```", section, re.S)
    assert block is not None, "README.md's Using it section has no sh block"
    commands = []
    for line in block.group(1).splitlines():
        words = shlex.split(line, comments=True)
        if words and words[0] == "aftersales":
            commands.append(words[1:])
    return commands


def test_the_walkthrough_shows_no_fixed_clock() -> None:
    # given the walk-through's commands
    commands = walkthrough()
    # then none runs on a fixed clock: a date in it would expire
    assert commands
    assert not any("--now" in words for words in commands)


def test_every_command_of_the_walkthrough_succeeds_today(cli: CliFn) -> None:
    # given a fresh database, and the walk-through of README.md
    for words in walkthrough():
        # when each command runs in order on the system clock
        result = cli(*words)
        # then it succeeds
        assert result.code == 0, (words, result.stdout, result.stderr)


def test_the_sample_application_opens_a_case_on_the_sample_order(cli: CliFn) -> None:
    # given the samples imported as the walk-through does
    assert cli("demo", "--write-samples", "samples").code == 0
    assert cli("orders", "import", "samples/orders.jsonl").code == 0
    # when the sample application is submitted
    submitted = cli("case", "submit", "samples/application.json", "--json")
    # then its case takes its facts from the order and one shirt stays claimable
    assert submitted.code == 0, submitted.stderr
    case = submitted.json()
    assert (case["state"], case["merchant_id"], case["category"]) == (
        "submitted",
        "m1",
        "clothing",
    )
    shown = cli("orders", "show", "o-1001", "--json").json()
    assert [(line["quantity"], line["open_quantity"]) for line in shown["lines"]] == [(2, 1)]
