"""The lifecycle benchmark's simulation: many cases, each walking its scenario, interleaved on one
clock in one process, counting the units of work they open.
"""

from __future__ import annotations

import heapq
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from rich.progress import Progress, TaskID

from bench import support
from bench.lifecycle_scenarios import SWEEP, Act, D, Event, Scenario, Step, Wait
from persistence.unit_of_work import SqlUnitOfWork, SqlUnitOfWorkFactory
from workflow.clock import FakeClock
from workflow.errors import AftersalesError
from workflow.events.ingestion import EventService, IngestStatus
from workflow.model import SYSTEM, Actor
from workflow.service import CaseService
from workflow.states import Role

#: Between two cases' applications.
ARRIVALS = timedelta(minutes=2)


class CountingFactory:
    """The SQL unit-of-work factory, counting the units of work (transactions) opened."""

    def __init__(self, inner: SqlUnitOfWorkFactory) -> None:
        self._inner = inner
        self.opened = 0

    def __call__(self) -> SqlUnitOfWork:
        self.opened += 1
        return self._inner()


@dataclass
class Lifecycle:
    number: int
    scenario: Scenario
    case_id: int = 0
    step: int = 0
    failed: str | None = None

    def values(self) -> dict[str, Any]:
        return {
            "n": self.number,
            "case": self.case_id,
            "order": f"o-{self.number}",
            "ret": f"RT{self.number:07d}",
            "out": f"OB{self.number:07d}",
            "amount": self.scenario.application[5],
        }

    def fill(self, value: Any) -> Any:
        if isinstance(value, str):
            filled = value.format_map(self.values())
            return int(filled) if value in ("{case}", "{amount}") else filled
        if isinstance(value, dict):
            return {key: self.fill(item) for key, item in value.items()}
        return value

    def application(self, now: datetime) -> dict[str, Any]:
        kind, category, reason, paid, delivered, price = self.scenario.application
        return {
            "type": kind,
            "order_id": f"o-{self.number}",
            "buyer_id": f"b-{self.number % 997}",
            "merchant_id": f"m-{self.number % 53}",
            "category": category,
            "reason": reason,
            "description": self.scenario.name,
            "payment": {
                "channel": "wechat_pay",
                "amount": price,
                "paid_at": (now - timedelta(days=paid)).isoformat(),
            },
            "delivered_at": None if delivered is None else (now - delivered * D).isoformat(),
            "items": [{"sku": f"sku-{self.number}", "quantity": 1, "unit_price": price}],
            "gifts": [],
        }

    def actor(self, role: Role) -> Actor:
        if role is Role.BUYER:
            return Actor(role, f"b-{self.number % 997}")
        if role is Role.MERCHANT:
            return Actor(role, f"m-{self.number % 53}")
        return SYSTEM


@dataclass
class Simulation:
    service: CaseService
    events: EventService
    clock: FakeClock
    bar: Progress
    task: TaskID
    timers_fired: int = 0
    timers_idle: int = 0
    events_applied: int = 0
    failures: list[str] = field(default_factory=list)

    def sweep(self) -> None:
        while True:
            runs = self.service.run_due_timers(limit=1000)
            for run in runs:
                if run.fired:
                    self.timers_fired += 1
                else:
                    self.timers_idle += 1
            if len(runs) < 1000:
                return

    def run(self, lifecycles: Sequence[Lifecycle]) -> None:
        """Drive every lifecycle to its end, in simulated-time order."""
        start = self.clock.now()
        queue: list[tuple[datetime, int, int]] = []
        for index in range(len(lifecycles)):
            heapq.heappush(queue, (start + index * ARRIVALS, index, index))
        serial = len(lifecycles)
        next_sweep = start + SWEEP
        while queue:
            at, _, index = heapq.heappop(queue)
            while next_sweep <= at:
                self.clock.set(next_sweep)
                self.sweep()
                next_sweep += SWEEP
            self.clock.set(at)
            lifecycle = lifecycles[index]
            following = self.advance(lifecycle)
            if following is None:
                self.bar.advance(self.task)
                continue
            serial += 1
            heapq.heappush(queue, (at + following, serial, index))
        # Nothing may be left waiting.
        self.sweep()

    def advance(self, lifecycle: Lifecycle) -> timedelta | None:
        """Run the lifecycle's next step; the delay to the one after, None at the end."""
        steps = lifecycle.scenario.steps
        try:
            if lifecycle.case_id == 0:
                app = lifecycle.application(self.clock.now())
                view = support.submit_with_order(self.service, app)
                assert view.case.id is not None
                lifecycle.case_id = view.case.id
            else:
                self.perform(lifecycle, steps[lifecycle.step])
                lifecycle.step += 1
        except (AftersalesError, AssertionError) as error:
            lifecycle.failed = f"{lifecycle.scenario.name} #{lifecycle.number}: {error!r}"
            self.failures.append(lifecycle.failed)
            return None
        if lifecycle.step >= len(steps):
            return None
        return steps[lifecycle.step].after

    def perform(self, lifecycle: Lifecycle, step: Step) -> None:
        match step:
            case Act():
                self.service.fire(
                    lifecycle.case_id,
                    step.trigger,
                    lifecycle.actor(step.role),
                    lifecycle.fill(step.data) if step.data else None,
                    step.reason,
                )
            case Event():
                envelope = {
                    "event_id": f"{step.type}-{lifecycle.number}-{lifecycle.step}",
                    "source": step.source,
                    "type": step.type,
                    "occurred_at": self.clock.now().isoformat(),
                    **lifecycle.fill(step.names),
                    "data": lifecycle.fill(step.data),
                }
                result = self.events.ingest(envelope)
                if result.status is not IngestStatus.APPLIED:
                    raise AssertionError(f"{step.type}: {result.status} {result.reason}")
                self.events_applied += 1
            case Wait():
                pass
