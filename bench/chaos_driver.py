"""The chaos benchmarks' outside world (``Driver``): merchants, carriers and buyers react to each
case's state read from the database; everything else is the workers'. Cases run in waves; once a
wave waits only for deadlines the clock jumps 49 hours, then 8 days. An event's id is made of the
case, its version and its type, so a copy sent again is the same event.
"""

from __future__ import annotations

import random
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import partial
from typing import Any

import sqlalchemy as sa

from bench import support
from bench.chaos_common import (
    CASE_TYPE_OF,
    CLOCK_SPEED,
    JUMPS,
    KINDS,
    WAITING_FOR_TIMER,
    Deployment,
)
from persistence.db import make_engine
from persistence.tables import cases
from workflow.states import TERMINAL_STATES, CaseState


def application(kind: str, order_id: str, now: datetime) -> dict[str, Any]:
    """An application of ``kind`` eligible at ``now`` (paid 5 days ago, delivered 2 days ago)."""
    case_type = CASE_TYPE_OF[kind]
    base: dict[str, Any] = {
        "type": case_type,
        "order_id": order_id,
        "buyer_id": "b1",
        "merchant_id": "m1",
        "category": "clothing",
        "reason": "no_reason",
        "payment": {
            "channel": "wechat_pay",
            "amount": 19900,
            "paid_at": (now - timedelta(days=5)).isoformat(),
        },
        "delivered_at": (now - timedelta(days=2)).isoformat(),
        "items": [{"sku": "jacket", "quantity": 1, "unit_price": 19900}],
        "gifts": [],
    }
    if case_type == "repair":
        base |= {"category": "phone", "reason": "quality_issue"}
        base["items"] = [{"sku": "phone", "quantity": 1, "unit_price": 19900}]
    if case_type == "refund_only":
        base |= {"reason": "not_received", "delivered_at": None}
    return base


def _event(
    source: str,
    type: str,
    case_id: int,
    version: int,
    now: datetime,
    data: dict[str, Any],
    parcel: str | None = None,
) -> dict[str, Any]:
    document: dict[str, Any] = {
        # The same case at the same version and the same event type: the same event.
        "event_id": f"chaos-{case_id}-v{version}-{type}",
        "source": source,
        "type": type,
        "occurred_at": now.isoformat(),
        "case_id": case_id,
        "data": data,
    }
    if parcel is not None:
        document["tracking_no"] = parcel
    return document


def reactions(
    kind: str, state: CaseState, case_id: int, version: int, now: datetime
) -> list[dict[str, Any]]:
    """What the outside world sends when a case of ``kind`` is in ``state`` (maybe nothing)."""

    def merchant(type: str, **data: Any) -> dict[str, Any]:
        data = {"merchant_id": "m1", **data}
        return _event("merchant-portal", f"merchant.{type}", case_id, version, now, data)

    def carrier(type: str, parcel: str) -> dict[str, Any]:
        return _event("sf-express", f"parcel.{type}", case_id, version, now, {}, parcel)

    if kind == "silent":
        return []
    if state is CaseState.SUBMITTED:
        if kind == "rejected":
            return [merchant("rejected", reason="worn and washed")]
        return [merchant("approved")]
    outbound = f"FX{case_id}"
    reacting: dict[CaseState, Callable[[], list[dict[str, Any]]]] = {
        CaseState.PICKUP: lambda: [carrier("picked_up", f"SF{case_id}")],
        CaseState.SHIPPED_BACK: lambda: [carrier("delivered", f"SF{case_id}")],
        CaseState.RETURN_DELIVERED: lambda: [merchant("receipt_confirmed")],
        CaseState.RECEIVED: lambda: [merchant("inspected")],
        CaseState.SHIPPED_TO_BUYER: lambda: [carrier("delivered", outbound)],
        CaseState.DELIVERED_TO_BUYER: lambda: [
            _event(
                "buyer-app", "buyer.delivery_confirmed", case_id, version, now, {"buyer_id": "b1"}
            )
        ],
    }
    if state is CaseState.INSPECTED and kind in ("exchange", "repair"):
        shipped = "replacement_shipped" if kind == "exchange" else "repaired_shipped"
        return [merchant(shipped, tracking_no=outbound, carrier="SF")]
    make = reacting.get(state)
    return make() if make is not None else []


@dataclass
class Flood:
    """How the outside world misbehaves: each event sent ``1..copies`` times, and with
    probability ``reorder`` a return parcel's delivery reported before its pickup."""

    copies: int = 1
    reorder: float = 0.0
    #: Send again an event whose case has not moved this long after (s): a producer retrying
    #: what a broker outage lost. 0: never (a lost event then shows as a stuck case).
    resend_after_s: float = 0.0


@dataclass
class DriverStats:
    cases: int = 0
    events: int = 0
    copies: int = 0
    reordered: int = 0
    resent: int = 0
    waves: int = 0
    jumps: int = 0
    #: Rounds cut short because the broker was unreachable.
    send_failures: int = 0


class Driver:
    """Submits the cases wave by wave and reacts to their states until every one is terminal."""

    def __init__(
        self,
        run: Deployment,
        cases: int,
        waves: int,
        flood: Flood,
        rng: random.Random,
        on_progress: Callable[[int, int], None] = lambda done, total: None,
        stage_timeout_s: float = 240.0,
    ) -> None:
        self.run = run
        self.total = cases
        self.waves = waves
        self.flood = flood
        self.rng = rng
        self.on_progress = on_progress
        self.stage_timeout_s = stage_timeout_s
        self.stats = DriverStats()
        self.kinds: dict[int, str] = {}
        self._sent: dict[tuple[int, int], tuple[float, list[dict[str, Any]]]] = {}
        self._done = 0
        self._engine = make_engine(run.database_url)

    def drive(self, keep_going: Callable[[], bool] = lambda: False) -> None:
        """Run the waves; then more waves of the same size while ``keep_going()`` (the fault
        injector has not done its share yet)."""
        size = -(-self.total // self.waves)
        remaining = self.total
        while remaining > 0 or keep_going():
            count = min(size, remaining) if remaining > 0 else size
            self._wave(count)
            remaining -= count

    def _wave(self, count: int) -> None:
        self.stats.waves += 1
        now = self.run.clock.now()
        weights = [weight for _, _, weight in KINDS]
        names = [kind for kind, _, _ in KINDS]
        ids = []
        for _ in range(count):
            kind = self.rng.choices(names, weights)[0]
            order = f"o-chaos-{self.stats.cases}"
            app = application(kind, order, now)
            case_id = support.submit_with_order(self.run.service, app).case.id
            assert case_id is not None
            self.kinds[case_id] = kind
            ids.append(case_id)
            self.stats.cases += 1
        for jump, waiting in zip(JUMPS, WAITING_FOR_TIMER, strict=True):
            self._until(ids, partial(self._only, waiting=waiting), "the wave")
            self.run.clock.advance(jump)
            self.stats.jumps += 1
        self._until(ids, self._all_terminal, "the wave's last deadlines")

    def _only(self, states: dict[int, CaseState], *, waiting: dict[str, CaseState]) -> bool:
        """Every case terminal, but those of a kind in ``waiting``, which are in its state."""
        return all(
            state in TERMINAL_STATES or waiting.get(self.kinds[case]) is state
            for case, state in states.items()
        )

    @staticmethod
    def _all_terminal(states: dict[int, CaseState]) -> bool:
        return all(state in TERMINAL_STATES for state in states.values())

    def _until(
        self, ids: list[int], reached: Callable[[dict[int, CaseState]], bool], what: str
    ) -> None:
        deadline = time.monotonic() + self.stage_timeout_s
        tick = time.monotonic()
        while True:
            rows = self._states(ids)
            states = {case: state for case, (state, _) in rows.items()}
            if reached(states):
                return
            if time.monotonic() > deadline:
                stuck = Counter(
                    f"{self.kinds[case]}@{state.value}"
                    for case, state in states.items()
                    if state not in TERMINAL_STATES
                )
                raise TimeoutError(
                    f"{what}: cases stuck after {self.stage_timeout_s:.0f} s: {dict(stuck)}"
                )
            for case, (state, version) in rows.items():
                if not self._react(case, state, version):
                    self.stats.send_failures += 1
                    break
            time.sleep(0.2)
            elapsed, tick = time.monotonic() - tick, time.monotonic()
            self.run.clock.advance(timedelta(seconds=elapsed * CLOCK_SPEED))

    def _states(self, ids: list[int]) -> dict[int, tuple[CaseState, int]]:
        query = sa.select(cases.c.id, cases.c.state, cases.c.version).where(cases.c.id.in_(ids))
        with self._engine.connect() as connection:
            rows = {
                row.id: (CaseState(row.state), row.version) for row in connection.execute(query)
            }
        done = sum(1 for state, _ in rows.values() if state in TERMINAL_STATES)
        finished_before = self._done_before(ids)
        self.on_progress(finished_before + done, max(self.total, self.stats.cases))
        return rows

    def _done_before(self, ids: list[int]) -> int:
        # Cases of earlier waves are all terminal when a wave starts.
        return self.stats.cases - len(ids)

    def _react(self, case: int, state: CaseState, version: int) -> bool:
        """Send what the outside world sends now for this case; False if the broker is down."""
        if state in TERMINAL_STATES:
            return True
        key = (case, version)
        sent = self._sent.get(key)
        if sent is not None:
            at, envelopes = sent
            if not self.flood.resend_after_s or time.monotonic() - at < self.flood.resend_after_s:
                return True
            if not all(self.run.send_event(envelope) for envelope in envelopes):
                return False
            self.stats.resent += len(envelopes)
            self._sent[key] = (time.monotonic(), envelopes)
            return True
        now = self.run.clock.now()
        envelopes = reactions(self.kinds[case], state, case, version, now)
        if state is CaseState.PICKUP and envelopes and self.rng.random() < self.flood.reorder:
            # The carrier's delivery scan arrives before its pickup scan: the delivery implies
            # the pickup, and the late pickup is ignored.
            envelopes = (
                reactions(self.kinds[case], CaseState.SHIPPED_BACK, case, version, now) + envelopes
            )
            self.stats.reordered += 1
        copies = [self.rng.randint(1, self.flood.copies) for _ in envelopes]
        for envelope, times in zip(envelopes, copies, strict=True):
            if not all(self.run.send_event(envelope) for _ in range(times)):
                return False  # not recorded as sent: the whole reaction is sent next round
        self._sent[key] = (time.monotonic(), envelopes)
        self.stats.events += len(envelopes)
        self.stats.copies += sum(copies) - len(copies)
        return True
