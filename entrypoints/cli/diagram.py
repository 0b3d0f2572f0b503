"""``aftersales diagram``: the state diagrams, drawn from the transition table (imported when
the command runs, see ``main``)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from entrypoints.cli.common import JsonFlag, print_json, state_of
from entrypoints.cli.inputs import MAX_BATCH_BYTES, InputError, read_text
from workflow.states import CaseState, CaseType


def diagram(
    ctx: typer.Context,
    case_type: Annotated[CaseType | None, typer.Option("--type", help="The case type.")] = None,
    current: Annotated[CaseState | None, typer.Option(help="Highlight this state.")] = None,
    update_readme: Annotated[
        Path | None,
        typer.Option(metavar="FILE", help="Rewrite the diagram blocks of this Markdown file."),
    ] = None,
    check_readme: Annotated[
        Path | None,
        typer.Option(metavar="FILE", help="Exit 1 if the diagram blocks of this file are stale."),
    ] = None,
    json_output: JsonFlag = False,
) -> None:
    """The Mermaid state diagram of a case type, drawn from the transition table."""
    from entrypoints import readme_diagrams
    from workflow.diagram import mermaid

    if update_readme is not None or check_readme is not None:
        path = update_readme or check_readme
        assert path is not None
        # Read once within the bounds first: a device or a file that is not UTF-8 is one line.
        read_text(str(path), MAX_BATCH_BYTES)
        code = readme_diagrams.main([str(path), *([] if update_readme else ["--check"])])
        raise typer.Exit(code)
    if case_type is None:
        raise InputError("usage", "give --type (one of " + ", ".join(CaseType) + ")")
    text = mermaid(case_type, current)
    if state_of(ctx, json_output).json:
        print_json({"type": case_type.value, "mermaid": text})
        return
    # Exactly the generator's text: README blocks are compared with this output byte for byte.
    sys.stdout.write(text)
