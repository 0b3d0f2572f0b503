"""Typed errors of the service layer. Each carries one clear line for the user; none is a bug."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import datetime


class Phrase:
    """A message whose instants stay instants until it is shown: the domain keeps no display
    zone, so each edge shows them in its own (the command line in ``AFTERSALES_DISPLAY_TZ``,
    the HTTP API and ``str()`` as ISO 8601 in UTC, as the instants are stored)."""

    def __init__(self, *parts: str | datetime | Phrase) -> None:
        flat: list[str | datetime] = []
        for part in parts:
            flat.extend(part.parts if isinstance(part, Phrase) else (part,))
        self.parts: tuple[str | datetime, ...] = tuple(flat)

    def render(self, show_time: Callable[[datetime], str] = datetime.isoformat) -> str:
        return "".join(part if isinstance(part, str) else show_time(part) for part in self.parts)

    def __str__(self) -> str:
        return self.render()


class AftersalesError(Exception):
    """A refusal the caller can act on. ``code`` is stable; ``str()`` is one readable line;
    ``phrase`` is the same line with its instants kept for the edge to show."""

    code = "error"

    def __init__(self, message: str | Phrase) -> None:
        self.phrase = message if isinstance(message, Phrase) else Phrase(message)
        self.message = str(self.phrase)
        super().__init__(self.message)


class NotFound(AftersalesError):
    code = "not_found"


class InvalidInput(AftersalesError):
    code = "invalid_input"

    def __init__(self, message: str | Phrase, field: str | None = None) -> None:
        super().__init__(Phrase(f"{field}: ", message) if field else message)
        self.field = field


class IdempotencyKeyReused(InvalidInput):
    """An idempotency key names one call; reused for another command it is refused, never
    answered with the first call's result."""

    code = "idempotency_key_reused"

    def __init__(self, message: str) -> None:
        super().__init__(message, "idempotency_key")


class StateConflict(InvalidInput):
    """The request is well formed but the resource's current state refuses it: a case with no
    pending deadline to extend, a deadline moved earlier, a dead letter already resolved.
    (Over HTTP a 409; on the command line, as invalid input, exit 2.)"""


class Forbidden(AftersalesError):
    code = "forbidden"


class NotAllowed(AftersalesError):
    """The trigger cannot fire in the case's state for this actor."""

    code = "not_allowed"

    def __init__(self, message: str | Phrase, allowed: Sequence[str]) -> None:
        allowed_text = ", ".join(allowed) if allowed else "none"
        super().__init__(Phrase(message, f"; allowed now: {allowed_text}"))
        self.allowed = list(allowed)


class Conflict(AftersalesError):
    """Another transition changed the case first (stale version)."""

    code = "conflict"

    def __init__(self, message: str, current_version: int | None = None) -> None:
        super().__init__(message)
        self.current_version = current_version


def case_moved(case_id: int | None) -> Conflict:
    """A compare-and-set on the case's version missed: another transition wrote first."""
    return Conflict(f"case {case_id} was changed by another transition; reload and retry")


def recorded_meanwhile(source: str, event_id: str) -> Conflict:
    """An event's dedupe record was written by a concurrent delivery of the same event."""
    return Conflict(f"event {source}/{event_id} was recorded by a concurrent delivery")


class PolicyRefusal(AftersalesError):
    """A rule of the after-sales policy refuses the request; ``rule`` names it."""

    code = "policy_refusal"

    def __init__(self, rule: str, message: str | Phrase) -> None:
        super().__init__(Phrase(f"refused by rule {rule}: ", message))
        self.rule = rule


class IngestFailed(AftersalesError):
    """An event could not be ingested for a reason that is not the event's: kept as a dead
    letter to replay once the cause is fixed."""

    code = "ingest_failed"
