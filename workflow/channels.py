"""Where a transition came from, as its log record shows it (``TransitionRecord.source``).

The actor says who acted; the channel says how it reached us, which is what an audit needs when
the two could differ (an event acting for a merchant came through a producer's source).
"""

from __future__ import annotations

#: A person at the command line.
CLI = "cli"
#: A deadline that fired (the timer sweep, ``timers run-due``).
TIMER = "timer"
#: A side effect's task in a worker (a pickup booked, a refund executed).
WORKER = "worker"
#: The demos' scripted steps.
DEMO = "demo"


def api_token(token_id: int | None) -> str:
    """A request to the HTTP API with this bearer token."""
    return f"api token #{token_id}"


def event(source: str, event_id: str) -> str:
    """An inbound event of ``source`` (``sf-express``) with its id."""
    return f"event {source}/{event_id}"


def console(token_id: int | None) -> str:
    """A form of the operations console, signed in with this bearer token."""
    return f"console token #{token_id}"
