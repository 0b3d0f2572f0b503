"""What ``CaseService`` answers: a case with its deadline, the result of firing a trigger, the
outcome of running one timer."""

from __future__ import annotations

from dataclasses import dataclass

from workflow.model import Case, Timer, TransitionRecord


@dataclass(frozen=True)
class CaseView:
    """A case as callers see it: the case and its pending deadline."""

    case: Case
    deadline: Timer | None


@dataclass(frozen=True)
class FireResult:
    case: Case
    deadline: Timer | None
    records: list[TransitionRecord]
    #: True when an earlier call with the same idempotency key already did this.
    replayed: bool = False


@dataclass(frozen=True)
class TimerRun:
    timer: Timer
    fired: bool
    outcome: str
