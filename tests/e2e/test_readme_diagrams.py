"""README.md's Mermaid diagrams are the ones ``aftersales diagram`` draws from the table.

When this fails after a change to the transition table, regenerate them:
``python -m entrypoints.readme_diagrams README.md`` (or ``aftersales diagram --update-readme``).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from entrypoints import readme_diagrams
from workflow.diagram import mermaid
from workflow.states import CaseType

from .support import CliFn

README = Path(__file__).resolve().parents[2] / "README.md"


@pytest.mark.parametrize("case_type", list(CaseType), ids=str)
def test_readme_diagram_equals_the_command_output(cli: CliFn, case_type: CaseType) -> None:
    # given the diagram block README embeds for this type
    blocks = readme_diagrams.embedded(README.read_text(encoding="utf-8"))
    assert case_type.value in blocks, (
        f"README.md has no <!-- diagram:{case_type.value} --> ... "
        f"<!-- /diagram:{case_type.value} --> block around a ```mermaid fence"
    )

    # when the command draws it
    drawn = cli("diagram", "--type", case_type.value)

    # then they are the same text
    assert drawn.code == 0, drawn.stderr
    assert blocks[case_type.value] == drawn.stdout, (
        "README.md diagram is stale: run python -m entrypoints.readme_diagrams README.md"
    )


STALE = """# Title

Some prose that must survive.

<!-- diagram:exchange -->
```mermaid
stateDiagram-v2
    old --> older
```
<!-- /diagram:exchange -->

More prose.
"""


def test_updater_rewrites_stale_blocks_and_keeps_the_prose(tmp_path: Path) -> None:
    # given a document with a stale block
    path = tmp_path / "doc.md"
    path.write_text(STALE, encoding="utf-8")
    assert readme_diagrams.main([str(path), "--check"]) == 1

    # when it is rewritten
    readme_diagrams.main([str(path)])

    # then the block holds the generated diagram and nothing else changed
    text = path.read_text(encoding="utf-8")
    assert readme_diagrams.embedded(text) == {"exchange": mermaid(CaseType.EXCHANGE)}
    assert text.startswith(
        "# Title\n\nSome prose that must survive.\n\n<!-- diagram:exchange -->\n"
    )
    assert text.endswith("<!-- /diagram:exchange -->\n\nMore prose.\n")
    # the other types have no block yet, so the check still reports them
    problems = readme_diagrams.stale(text)
    assert sorted(problems) == sorted(
        f"{t.value}: no <!-- diagram:{t.value} --> block" for t in CaseType if t.value != "exchange"
    )


def test_updater_through_the_command(invoke: CliFn, tmp_path: Path) -> None:
    # given a document with a (stale) block for every type
    path = tmp_path / "doc.md"
    path.write_text(
        "".join(
            f"<!-- diagram:{t.value} -->\n```mermaid\nstale\n```\n<!-- /diagram:{t.value} -->\n"
            for t in CaseType
        ),
        encoding="utf-8",
    )
    assert invoke("diagram", "--check-readme", str(path)).code == 1

    # when
    updated = invoke("diagram", "--update-readme", str(path))

    # then
    assert updated.code == 0, updated.stderr
    assert invoke("diagram", "--check-readme", str(path)).code == 0
