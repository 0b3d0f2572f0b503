"""The events benchmark's measured scenario: one drain of one kind of work.

The workers stop consuming (``control.cancel_consumer``), the bench publishes the round's
messages, the workers start again, and from the first poll that sees units done (not counted)
the clock runs until the last is done. A no-op is done when its message is acknowledged
(published - LLEN(queue) - HLEN(unacked): kombu keeps delivered, unacknowledged messages in the
``unacked`` hash); an event when its ``inbound_events`` row, written in the transaction that
applies it, is visible. ``settled/s`` runs on until every outbox row is completed too.
"""

from __future__ import annotations

import argparse
import math
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import httpx
from rich.progress import Progress

from bench.events_seeding import Event, Seeded, feed_name, make_events
from bench.events_stack import POLL_S, Stack, load, wait_for
from tasks import producer

KINDS = ("noop", "single", "batch", "http")


@dataclass
class Drain:
    """One measured drain of one kind."""

    round: int
    kind: str
    units: int
    messages: int
    #: Seconds from the first poll that saw units done to the last unit done (applied, for
    #: events). The clock starts there, not at ``resume``: the control broadcast and the
    #: workers' first fetch take a fixed ~0.5 s that would weigh on a short drain more than
    #: on a long one, and so on the slower kinds more than on the no-op.
    done_s: float
    #: ... and to everything the units caused being done too.
    settled_s: float
    cpu: dict[str, float]
    load: str
    #: Units done after the clock started (those seen at its start are not counted).
    counted: int = 0

    @property
    def rate(self) -> float:
        return self.counted / self.done_s

    @property
    def settled_rate(self) -> float:
        return self.counted / self.settled_s


def _publish(stack: Stack, kind: str, events: Sequence[Event], batch: int) -> int:
    """Queue the events the way producers do; the number of messages."""
    envelopes = [event.envelope for event in events]
    if kind == "single":
        for envelope in envelopes:
            producer.publish_event(envelope, stack.broker_url)
        return len(envelopes)
    chunks = [envelopes[i : i + batch] for i in range(0, len(envelopes), batch)]
    for chunk in chunks:
        producer.publish_events(chunk, stack.broker_url)
    return len(chunks)


def _post_all(stack: Stack, events: Sequence[Event], batch: int, clients: int) -> list[float]:
    """POST the events in arrays of ``batch`` from ``clients`` threads; each request's seconds."""
    envelopes = [event.envelope for event in events]
    chunks = [envelopes[i : i + batch] for i in range(0, len(envelopes), batch)]
    headers = {"Authorization": f"Bearer {stack.token}"}
    local = threading.local()

    def post(chunk: list[dict[str, Any]]) -> float:
        if not hasattr(local, "client"):
            local.client = httpx.Client(base_url=stack.api_url, headers=headers, timeout=60)
        started = time.perf_counter()
        response = local.client.post("/events", json=chunk)
        if response.status_code != 202:
            raise RuntimeError(f"POST /events: {response.status_code} {response.text[:300]}")
        applied = response.json()["summary"]["applied"]
        if applied != len(chunk):
            raise RuntimeError(f"POST /events applied {applied} of {len(chunk)}")
        return time.perf_counter() - started

    with ThreadPoolExecutor(clients) as pool:
        return list(pool.map(post, chunks))


def drain(
    stack: Stack,
    kind: str,
    round_: int,
    units: int,
    seeded: Seeded,
    options: argparse.Namespace,
    bar: Progress,
    *,
    during: Callable[[], Any] | None = None,
) -> tuple[Drain, list[Event]]:
    """Measure one kind: queue ``units`` with the workers paused, then time them."""
    label = f"round {round_} {kind}" if round_ else f"warm-up {kind}"
    task = bar.add_task(label, total=units)
    feed = feed_name(round_, kind)
    events = [] if kind == "noop" else make_events(seeded, feed, units)
    messages = units
    if kind != "http":
        stack.pause()
        if kind == "noop":
            for _ in range(units):
                stack.app.send_task("aftersales.noop")
        else:
            messages = _publish(stack, kind, events, options.batch_size)
    else:
        messages = math.ceil(units / options.http_batch)
    before = stack.cpu()
    started = time.monotonic()
    recorder = during() if during else None
    if kind == "http":
        poster = threading.Thread(
            target=_post_all, args=(stack, events, options.http_batch, options.http_clients)
        )
        poster.start()
    else:
        stack.resume()

    first_seen: list[tuple[float, int]] = []

    def progress() -> int:
        stack.check_alive()
        done = units - stack.in_broker() if kind == "noop" else stack.applied(feed)
        if done and not first_seen:
            first_seen.append((time.monotonic(), done))
        bar.update(task, completed=done)
        return done

    wait_for(lambda: progress() >= units, f"{label} to be done", every=POLL_S)
    if first_seen[0][1] >= units:
        # All done by the first poll that saw any: time it from resuming instead.
        first_seen[0] = (started, 0)
    started, seen_done = first_seen[0]
    done_s = time.monotonic() - started
    if kind == "http":
        poster.join()
        # What beat's periodic relay would do within OUTBOX_RELAY_INTERVAL_S.
        stack.app.send_task("aftersales.relay_outbox")
    wait_for(stack.settled, f"{label}'s effects to be done", every=0.02)
    settled_s = time.monotonic() - started
    if recorder is not None:
        recorder.stop()
    after = stack.cpu()
    bar.update(task, completed=units)
    cpu = {part: after[part] - before[part] for part in before}
    counted = units - seen_done
    drained = Drain(round_, kind, units, messages, done_s, settled_s, cpu, load(), counted)
    return drained, events
