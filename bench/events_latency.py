"""The events benchmark's latency phase: events at a steady pace, each timed from its send to
the commit of its transition.
"""

from __future__ import annotations

import json
import math
import threading
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass

import psycopg
from rich.progress import Progress

from bench.events_seeding import PACED_ROUND, Event, Seeded, feed_name, feed_sources, make_events
from bench.events_stack import POLL_S, Stack, load, wait_for
from tasks import producer


class CommitWatch(threading.Thread):
    """Sees each event's ``inbound_events`` row appear: the commit was before the poll that first
    sees it and after the one before. Event ids are zero-padded in publish order, so each poll
    reads only past the longest prefix seen in full."""

    def __init__(self, conninfo: str, feed: str, count: int) -> None:
        super().__init__(daemon=True)
        self.sources, self.count = feed_sources(feed), count
        self.connection = psycopg.connect(conninfo, autocommit=True)
        self.seen: dict[str, float] = {}
        self.polls = 0
        self._halt = threading.Event()

    def run(self) -> None:
        # Every id below ``first_unseen`` has been seen.
        first_unseen = 0
        while not self._halt.is_set() and len(self.seen) < self.count:
            floor = f"{first_unseen - 1:07d}" if first_unseen else ""
            moment = time.time()
            rows = self.connection.execute(
                "SELECT event_id FROM inbound_events WHERE source = ANY(%s) AND event_id > %s",
                (self.sources, floor),
            ).fetchall()
            self.polls += 1
            for (event_id,) in rows:
                self.seen.setdefault(event_id, moment)
            while f"{first_unseen:07d}" in self.seen:
                first_unseen += 1
            self._halt.wait(POLL_S)
        self.connection.close()

    def stop(self) -> None:
        self._halt.set()
        self.join()


@dataclass
class Latency:
    kind: str
    rate: float
    #: publish -> commit (s) of each event; publish -> start of its transaction.
    commit: list[float]
    started: list[float]
    pings: list[float]
    load: str
    events: list[Event]


def percentile(values: Sequence[float], share: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return math.nan
    return ordered[min(len(ordered) - 1, max(0, math.ceil(share * len(ordered)) - 1))]


def paced(
    stack: Stack, kind: str, rate: float, seconds: float, seeded: Seeded, batch: int, bar: Progress
) -> Latency:
    """Publish ``kind`` at ``rate`` events/s for ``seconds`` (a ping every tenth of a second)."""
    count = max(batch if kind == "batch" else 1, int(rate * seconds))
    if kind == "batch":
        count -= count % batch
    feed = feed_name(PACED_ROUND, f"paced-{kind}")
    events = make_events(seeded, feed, count)
    task = bar.add_task(f"latency {kind} at {rate:,.0f}/s", total=count)
    watch = CommitWatch(stack.conninfo, feed, count)
    watch.start()
    published: dict[str, float] = {}
    pings: list[tuple[str, float]] = []
    step = batch if kind == "batch" else 1
    start = time.monotonic() + 0.05
    next_ping = start
    for index in range(0, count, step):
        due = start + index / rate
        while (now := time.monotonic()) < due:
            if now >= next_ping:
                token = uuid.uuid4().hex
                pings.append((token, time.time()))
                stack.app.send_task("aftersales.ping", args=[token])
                next_ping += 0.1
            time.sleep(min(0.002, max(0.0, due - now)))
        chunk = events[index : index + step]
        moment = time.time()
        if kind == "batch":
            producer.publish_events([e.envelope for e in chunk], stack.broker_url)
        else:
            producer.publish_event(chunk[0].envelope, stack.broker_url)
        for event in chunk:
            published[event.event_id] = moment
        bar.update(task, completed=len(watch.seen))
    wait_for(lambda: len(watch.seen) >= count, f"paced {kind} events to commit")
    watch.stop()
    bar.update(task, completed=count)
    wait_for(stack.settled, f"paced {kind}'s effects to be done", every=0.02)
    started_at = {
        row[0]: row[1].timestamp()
        for row in stack.db.execute(
            "SELECT event_id, received_at FROM inbound_events WHERE source = ANY(%s)",
            (feed_sources(feed),),
        )
    }
    ping_latencies = []
    for token, moment in pings:
        proof = stack.folder / "pings" / token
        wait_for(proof.exists, "a ping to run")
        ping_latencies.append(float(json.loads(proof.read_text())["at"]) - moment)
    return Latency(
        kind,
        rate,
        [watch.seen[e] - published[e] for e in published],
        [started_at[e] - published[e] for e in published],
        ping_latencies,
        load(),
        events,
    )
