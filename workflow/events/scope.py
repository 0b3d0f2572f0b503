"""Who may say what: a producer sends only its kind's events (RULES.md part C).

The sources and their kinds are configuration (``config/sources.toml``), passed in as data. An
event of a source that is not configured, or of a type outside its source's kind, never reaches
a case: over HTTP it is refused (403), from a queue it becomes a dead letter with this reason.
"""

from __future__ import annotations

from config.sources import Sources
from workflow.errors import Forbidden
from workflow.events.envelope import Envelope


class SourceNotAllowed(Forbidden):
    """The event's source is not a configured producer, or not of the kind that sends it."""

    code = "source_not_allowed"


def check_source(envelope: Envelope, sources: Sources) -> None:
    """Raise ``SourceNotAllowed`` unless ``envelope.source`` may send ``envelope.type``."""
    refusal = sources.refusal(envelope.source, envelope.type.value)
    if refusal is not None:
        raise SourceNotAllowed(refusal)
