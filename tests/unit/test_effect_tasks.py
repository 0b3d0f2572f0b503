"""``tasks.effects._perform`` marks the outbox entry completed once the effect is settled (done,
skipped, failed for good, or handed to its slow path), and never when it retries."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from types import SimpleNamespace
from typing import Any

import pytest
from sqlalchemy.exc import OperationalError

from tasks import effects as effect_tasks
from tasks.publish import TASK_BOOK_PICKUP, TASK_NOTIFY, TASK_NOTIFY_MANY, TASK_RETRY
from workflow.effects import (
    CASE_TRANSITIONED,
    PICKUP_REQUESTED,
    EffectResult,
    EffectStatus,
    entry_to_message,
)
from workflow.errors import Conflict
from workflow.gateways import GatewayUnavailable
from workflow.model import OutboxEntry

ENTRY = OutboxEntry(7, PICKUP_REQUESTED, 1, {"seq": 2}, datetime(2026, 11, 20, 2, tzinfo=UTC))
MESSAGE = entry_to_message(ENTRY)


class Retried(Exception):
    pass


@dataclass
class FakeApp:
    sent: list[tuple[str, list[Any]]] = field(default_factory=list)

    def send_task(self, name: str, args: list[Any]) -> None:
        self.sent.append((name, args))


@dataclass
class FakeTask:
    retries: int = 0
    name: str = TASK_BOOK_PICKUP
    retried: list[dict[str, Any]] = field(default_factory=list)
    app: FakeApp = field(default_factory=FakeApp)

    @property
    def request(self) -> SimpleNamespace:
        return SimpleNamespace(retries=self.retries)

    def retry(self, **options: Any) -> Retried:
        self.retried.append(options)
        return Retried()


@dataclass
class FakeEffects:
    outcome: EffectStatus | BaseException

    def handle(self, entry: OutboxEntry) -> EffectResult:
        if isinstance(self.outcome, BaseException):
            raise self.outcome
        return EffectResult(entry.topic, entry.case_id, self.outcome, entry_id=entry.id)

    def notify_many(self, entries: list[OutboxEntry]) -> list[EffectResult]:
        return [self.handle(entry) for entry in entries]

    def handle_exhausted(self, entry: OutboxEntry, error: str) -> EffectResult:
        return EffectResult(entry.topic, entry.case_id, EffectStatus.FAILED, error, entry.id)


@dataclass
class FakeRelay:
    fails: BaseException | None = None
    completed: list[int] = field(default_factory=list)
    postponed: list[tuple[int, float]] = field(default_factory=list)

    def postpone(self, seconds: float, *entry_ids: int) -> None:
        self.postponed.extend((entry_id, seconds) for entry_id in entry_ids)

    def complete(self, *entry_ids: int) -> None:
        if self.fails is not None:
            raise self.fails
        self.completed.extend(entry_ids)


def _run(
    monkeypatch: pytest.MonkeyPatch,
    outcome: EffectStatus | BaseException,
    task: FakeTask | None = None,
    relay: FakeRelay | None = None,
) -> tuple[str | BaseException, FakeRelay]:
    relay = relay or FakeRelay()
    fake = SimpleNamespace(effects=FakeEffects(outcome), relay=relay)
    monkeypatch.setattr(effect_tasks, "runtime", lambda: fake)
    try:
        return effect_tasks._perform(task or FakeTask(), MESSAGE), relay
    except Exception as error:
        return error, relay


@pytest.mark.parametrize("status", list(EffectStatus))
def test_a_settled_effect_completes_the_entry(
    monkeypatch: pytest.MonkeyPatch, status: EffectStatus
) -> None:
    result, relay = _run(monkeypatch, status)
    assert (result, relay.completed) == (str(status), [ENTRY.id])


@pytest.mark.parametrize(
    "error",
    [GatewayUnavailable("carrier down"), Conflict("raced"), OperationalError("x", {}, Exception())],
    ids=["gateway", "conflict", "database"],
)
def test_a_retry_leaves_the_entry_pending(
    monkeypatch: pytest.MonkeyPatch, error: BaseException
) -> None:
    task = FakeTask()
    result, relay = _run(monkeypatch, error, task)
    assert isinstance(result, Retried) and len(task.retried) == 1
    assert relay.completed == []


def test_a_gateway_retry_postpones_redelivery_until_it_runs(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # given a gateway that is down, when the task schedules its retry
    _, relay = _run(monkeypatch, GatewayUnavailable("carrier down"), FakeTask())
    # then the outbox row waits for that retry instead of being republished meanwhile
    assert [entry_id for entry_id, _ in relay.postponed] == [ENTRY.id]
    assert relay.postponed[0][1] > 0


def test_an_unexpected_failure_leaves_the_entry_pending(monkeypatch: pytest.MonkeyPatch) -> None:
    result, relay = _run(monkeypatch, KeyError("bug"))
    assert isinstance(result, KeyError) and relay.completed == []


def test_giving_up_completes_the_entry(monkeypatch: pytest.MonkeyPatch) -> None:
    task = FakeTask(retries=TASK_RETRY[TASK_BOOK_PICKUP].max_retries)
    result, relay = _run(monkeypatch, GatewayUnavailable("carrier down"), task)
    assert (result, task.retried, relay.completed) == ("failed", [], [ENTRY.id])


def test_a_failed_completion_does_not_fail_the_settled_effect(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    relay = FakeRelay(fails=OperationalError("x", {}, Exception()))
    result, _ = _run(monkeypatch, EffectStatus.DONE, relay=relay)
    assert result == "done"
    assert "could not mark them completed" in caplog.text


# -- notices many to a message (aftersales.notify_many) --------------------------------------------

NOTICES = [
    OutboxEntry(n, CASE_TRANSITIONED, n, {"state": "approved"}, ENTRY.created_at) for n in (3, 4, 5)
]
NOTICE_MESSAGES = [entry_to_message(entry) for entry in NOTICES]


def _run_notices(
    monkeypatch: pytest.MonkeyPatch, outcome: EffectStatus | BaseException, task: FakeTask
) -> tuple[int | BaseException, FakeRelay]:
    relay = FakeRelay()
    fake = SimpleNamespace(effects=FakeEffects(outcome), relay=relay)
    monkeypatch.setattr(effect_tasks, "runtime", lambda: fake)
    try:
        return effect_tasks._perform_notices(task, NOTICE_MESSAGES), relay
    except Exception as error:
        return error, relay


def test_a_batch_of_notices_completes_every_entry_at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    result, relay = _run_notices(monkeypatch, EffectStatus.DONE, FakeTask(name=TASK_NOTIFY_MANY))
    assert (result, relay.completed) == (3, [3, 4, 5])


def test_a_notifier_that_is_down_retries_the_batch_as_one_notice_would(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    task = FakeTask(name=TASK_NOTIFY_MANY)
    result, relay = _run_notices(monkeypatch, GatewayUnavailable("push service down"), task)
    assert isinstance(result, Retried) and relay.completed == []
    # every entry waits for the retry, which is as far off as a single notice's would be
    expected = TASK_RETRY[TASK_NOTIFY].delay(0)
    assert relay.postponed == [(3, expected), (4, expected), (5, expected)]
    assert task.retried[0]["max_retries"] == TASK_RETRY[TASK_NOTIFY].max_retries


def test_a_batch_of_notices_gives_up_with_the_single_notices_budget(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    task = FakeTask(retries=TASK_RETRY[TASK_NOTIFY].max_retries, name=TASK_NOTIFY_MANY)
    result, relay = _run_notices(monkeypatch, GatewayUnavailable("push service down"), task)
    assert (result, task.retried, relay.completed) == (3, [], [3, 4, 5])


def test_a_batch_that_fails_unexpectedly_hands_each_notice_to_a_task_of_its_own(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    task = FakeTask(name=TASK_NOTIFY_MANY)
    result, relay = _run_notices(monkeypatch, KeyError("bug in one entry"), task)
    # then nothing is completed here, and each entry goes on (and may fail) alone
    assert (result, relay.completed) == (0, [])
    assert task.app.sent == [(TASK_NOTIFY, [message]) for message in NOTICE_MESSAGES]
