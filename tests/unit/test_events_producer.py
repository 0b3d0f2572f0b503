"""The producer helper: standalone (celery and the standard library only), and what it sends."""

from __future__ import annotations

import ast
import importlib.util
import sys
from datetime import datetime
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from workflow.events.envelope import Envelope

PRODUCER = Path(__file__).resolve().parents[2] / "tasks" / "producer.py"


@pytest.fixture
def producer() -> ModuleType:
    """The file loaded on its own, as a producer that copied it would load it."""
    spec = importlib.util.spec_from_file_location("copied_producer", PRODUCER)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _received(producer: ModuleType, broker_url: str) -> list[tuple[str, Any]]:
    """The messages waiting on the broker's default queue: (task name, arguments)."""
    app = producer._app(broker_url)
    found = []
    with app.connection_for_read() as connection:
        queue = connection.SimpleQueue("celery")
        try:
            while True:
                try:
                    message = queue.get(timeout=0.2)
                except queue.Empty:
                    break
                found.append((message.headers["task"], message.payload[0]))
                message.ack()
        finally:
            queue.close()
    return found


def _imported(nodes: list[ast.AST]) -> set[str]:
    imported = set()
    for node in nodes:
        if isinstance(node, ast.Import):
            imported.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            imported.add(node.module.split(".")[0])
    return imported - sys.stdlib_module_names


def test_it_imports_only_celery_and_the_standard_library() -> None:
    tree = ast.parse(PRODUCER.read_text(encoding="utf-8"))
    assert _imported(list(tree.body)) == {"celery"}
    # and redis, celery[redis]'s client, only when an event is kept on a Redis broker
    assert _imported(list(ast.walk(tree))) == {"celery", "redis"}


def test_publish_event_sends_the_envelope_as_the_tasks_one_argument(producer: ModuleType) -> None:
    # given an envelope made by the helper
    envelope = producer.make_envelope(
        "sf-express", "parcel.delivered", tracking_no="SF1001", data={"recipient": "merchant"}
    )

    # when it is published (to an in-process broker)
    producer.publish_event(envelope, "memory://one")

    # then the ingest task got it as its only argument, and it is a valid envelope
    assert _received(producer, "memory://one") == [("aftersales.ingest_event", [envelope])]
    parsed = Envelope.model_validate(envelope)
    assert parsed.occurred_at.tzinfo is not None and parsed.tracking_no == "SF1001"


def test_publish_events_sends_one_batch(producer: ModuleType) -> None:
    batch = [producer.make_envelope("wechat-pay", "refund.succeeded", case_id=n) for n in (1, 2)]
    producer.publish_events(batch, "memory://two")
    producer.publish_events([], "memory://two")
    assert _received(producer, "memory://two") == [("aftersales.ingest_events", [batch])]


def test_make_envelope_keeps_a_given_id_and_refuses_a_naive_time(producer: ModuleType) -> None:
    envelope = producer.make_envelope("portal", "buyer.cancelled", case_id=3, event_id="e-1")
    assert envelope["event_id"] == "e-1" and "order_id" not in envelope
    with pytest.raises(ValueError, match="timezone"):
        producer.make_envelope(
            "portal", "buyer.cancelled", case_id=3, occurred_at=datetime(2026, 1, 1)
        )
