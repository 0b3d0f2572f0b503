"""The producers' ledger of unconfirmed events on a real Redis: what the producer keeps, what the
resender forgets and sends again, and a lost message applied from the ledger by real workers."""

from __future__ import annotations

import base64
import json
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from config.policy import load_policy
from entrypoints.samples import import_orders_for
from tasks import producer
from tasks.app import DEFAULT_QUEUE
from tasks.ledger import RedisUnconfirmedEvents
from tasks.resender import EventResender, Unconfirmed
from workflow.clock import FakeClock
from workflow.events.ingestion import EventService, IngestStatus
from workflow.memory import InMemoryUnitOfWorkFactory
from workflow.orders_service import OrderService
from workflow.service import CaseService

from .conftest import wait_for
from .support import T0, application, merchant, open_stack, stack_params, submit

AFTER_S = 60.0


@pytest.fixture
def prefix(redis_url: str) -> Iterator[str]:
    """A key prefix of the test's own on the shared Redis; its keys are deleted after."""
    key_prefix = f"aftersales-test:{uuid.uuid4().hex}:"
    yield key_prefix
    client = redis.Redis.from_url(redis_url)
    keys = list(client.scan_iter(match=f"{key_prefix}*"))
    if keys:
        client.delete(*keys)
    client.close()


@pytest.fixture
def client(redis_url: str) -> Iterator[redis.Redis]:
    connection = redis.Redis.from_url(redis_url)
    yield connection
    connection.close()


@pytest.fixture
def ledger(client: redis.Redis, prefix: str) -> RedisUnconfirmedEvents:
    return RedisUnconfirmedEvents(client, prefix)


@pytest.fixture
def events() -> EventService:
    uow_factory = InMemoryUnitOfWorkFactory()
    clock = FakeClock(T0)
    return EventService(CaseService(uow_factory, clock, load_policy()), uow_factory, clock)


def _event(event_id: str, **fields: Any) -> dict[str, Any]:
    return producer.make_envelope(
        "merchant-portal", "merchant.approved", event_id=event_id, **fields
    )


def _kept(client: redis.Redis, prefix: str) -> dict[tuple[str, str], tuple[float, dict[str, Any]]]:
    """The ledger as stored: (source, event_id) -> (score, record)."""
    scores = client.zrange(prefix + producer.UNCONFIRMED_KEY, 0, -1, withscores=True)
    records = client.hgetall(prefix + producer.UNCONFIRMED_ENVELOPES_KEY)
    assert {member for member, _ in scores} == set(records)
    return {
        tuple(json.loads(member)): (score, json.loads(records[member])) for member, score in scores
    }


def _queued(client: redis.Redis, prefix: str, queue: str = DEFAULT_QUEUE) -> list[Any]:
    """The first argument of each task waiting in a queue, oldest first (kombu LPUSHes each
    message with a base64 body of [args, kwargs, embed])."""
    messages = [json.loads(message) for message in reversed(client.lrange(prefix + queue, 0, -1))]
    return [json.loads(base64.b64decode(message["body"]))[0][0] for message in messages]


def test_the_producer_keeps_each_event_before_it_sends_it(
    redis_url: str, client: redis.Redis, prefix: str
) -> None:
    # given three events, two of them in one batch
    one, two, three = (_event(f"e-{n}", case_id=n) for n in (1, 2, 3))
    before = time.time()

    # when a producer sends them over Redis under the service's key prefix
    producer.publish_event(one, redis_url, key_prefix=prefix)
    producer.publish_events([two, three], redis_url, key_prefix=prefix)

    # then each is in the ledger, scored with when it was sent, never sent again yet
    kept = _kept(client, prefix)
    assert set(kept) == {("merchant-portal", e) for e in ("e-1", "e-2", "e-3")}
    for (_, event_id), (score, record) in kept.items():
        assert before <= score <= time.time()
        envelope = {"e-1": one, "e-2": two, "e-3": three}[event_id]
        assert record == {"envelope": envelope, "resends": 0}
    # and the messages went to the service's queue, under the same prefix
    assert _queued(client, prefix) == [one, [two, three]]


def test_events_the_service_cannot_name_and_opted_out_events_are_sent_but_not_kept(
    redis_url: str, client: redis.Redis, prefix: str
) -> None:
    nameless = {"source": "merchant-portal", "type": "merchant.approved", "case_id": 1}
    opted_out = _event("e-9", case_id=1)

    producer.publish_event(nameless, redis_url, key_prefix=prefix)
    producer.publish_event(opted_out, redis_url, key_prefix=prefix, keep=False)

    assert _kept(client, prefix) == {}
    assert _queued(client, prefix) == [nameless, opted_out]


def test_the_resender_forgets_what_arrived_and_sends_again_what_did_not(
    redis_url: str, client: redis.Redis, prefix: str, ledger: RedisUnconfirmedEvents
) -> None:
    # given a case, and three events kept by their producer: one the service applied, one whose
    # message was lost, and one sent a while later
    uow_factory = InMemoryUnitOfWorkFactory()
    clock = FakeClock(T0)
    cases = CaseService(uow_factory, clock, load_policy())
    events = EventService(cases, uow_factory, clock)
    app = application("return_refund", "o-1")
    import_orders_for(OrderService(uow_factory, clock, cases.policy), [app])
    case_id = cases.submit(app).case.id
    assert case_id is not None
    applied = _event("applied", case_id=case_id, data={"merchant_id": "m1"})
    lost = _event("lost", case_id=case_id, data={"merchant_id": "m1"})
    producer.publish_events([applied, lost], redis_url, key_prefix=prefix, keep=True)
    assert events.ingest(applied).status is IngestStatus.APPLIED
    sent_at = max(score for score, _ in _kept(client, prefix).values())
    late = _event("late", case_id=case_id)
    producer.publish_event(late, redis_url, key_prefix=prefix)
    late_member = producer.unconfirmed_member("merchant-portal", "late")
    client.zadd(prefix + producer.UNCONFIRMED_KEY, {late_member: sent_at + 30}, xx=True)
    sent: list[dict[str, Any]] = []
    wall = [sent_at + AFTER_S + 1]
    resender = EventResender(ledger, events, sent.append, AFTER_S, wall=lambda: wall[0])

    # when the resender runs a minute after the first two were sent (the third is not due)
    report = resender.run()

    # then the applied event left the ledger, and the lost one was sent again, once
    assert (report.confirmed, report.resent, report.dropped) == (1, 1, 0)
    assert sent == [lost]
    kept = _kept(client, prefix)
    assert set(kept) == {("merchant-portal", "lost"), ("merchant-portal", "late")}
    assert kept[("merchant-portal", "lost")][1] == {"envelope": lost, "resends": 1}

    # and the copy is looked at again two windows later, not before (the late one is due)
    first_resend = wall[0]
    wall[0] = first_resend + 2 * AFTER_S - 1
    assert resender.run().resent == 1
    assert sent == [lost, late]
    wall[0] = first_resend + 2 * AFTER_S + 1
    assert resender.run().resent == 1
    assert sent == [lost, late, lost]
    assert _kept(client, prefix)[("merchant-portal", "lost")][1]["resends"] == 2

    # and once the service has it (here: applied from the copy) the next look forgets it
    assert events.ingest(lost).status is IngestStatus.IGNORED
    wall[0] += 4 * AFTER_S + 1
    assert events.ingest(late).status is IngestStatus.DEAD_LETTERED  # no merchant_id: refused
    report = resender.run()
    assert (report.confirmed, report.resent) == (2, 0)
    assert _kept(client, prefix) == {}


def test_an_entry_forgotten_meanwhile_is_not_brought_back_and_unreadable_ones_are_dropped(
    client: redis.Redis, prefix: str, ledger: RedisUnconfirmedEvents, events: EventService
) -> None:
    # given an entry another run confirmed while this one was sending it again
    member = producer.unconfirmed_member("merchant-portal", "e-1")
    entry = Unconfirmed(member, _event("e-1", case_id=1), 0)
    ledger.postpone([entry], [100.0])
    assert _kept(client, prefix) == {}

    # and entries a hand or an old version left unreadable
    client.zadd(prefix + producer.UNCONFIRMED_KEY, {"garbled": 1.0, "no-ids": 1.0, "gone": 1.0})
    client.hset(
        prefix + producer.UNCONFIRMED_ENVELOPES_KEY,
        mapping={"garbled": "{not json", "no-ids": json.dumps({"envelope": {}, "resends": 0})},
    )

    # when the resender looks
    sent: list[dict[str, Any]] = []
    report = EventResender(ledger, events, sent.append, AFTER_S, wall=lambda: 1e12).run()

    # then the unreadable entries are dropped, and nothing is sent
    assert (report.confirmed, report.resent, report.dropped) == (0, 0, 3)
    assert sent == []
    assert client.exists(prefix + producer.UNCONFIRMED_KEY) == 0
    assert ledger.size() == 0


@pytest.mark.parametrize("kind", stack_params("redis-postgres"))
def test_an_event_whose_message_never_reached_a_worker_is_applied_from_the_ledger(
    request: pytest.FixtureRequest, tmp_path: Path, kind: tuple[str, str]
) -> None:
    env = {"AFTERSALES_EVENT_RESEND_AFTER_S": "1", "AFTERSALES_EVENT_RESEND_INTERVAL_S": "0.5"}
    with open_stack(request, tmp_path, *kind, env=env) as stack:
        # given a worker with beat, and a submitted case
        (worker,) = stack.start_workers(1)
        case_id = submit(stack, "return_refund", "o-lost-1")
        prefix = stack.runtime.settings.broker.key_prefix
        broker_url = stack.runtime.settings.broker.url
        assert broker_url is not None

        # when the merchant's approval is published to a queue no worker reads (the message is
        # as good as lost: it never reaches the service)
        approval = merchant(stack, "approved", case_id)
        producer.publish_event(approval, broker_url, queue="nowhere", key_prefix=prefix)

        # then beat's resender finds it unprocessed and sends it again, and it applies
        wait_for(lambda: "approve" in stack.triggers(case_id), "the approval to apply")
        stack.wait_log(worker, r"1 sent again", "the resender to say what it sent")
        # and the ledger is empty once the service has recorded it
        client = redis.Redis.from_url(broker_url)
        try:
            wait_for(
                lambda: client.zcard(prefix + producer.UNCONFIRMED_KEY) == 0,
                "the ledger to forget the applied event",
            )
            assert _queued(client, prefix, "nowhere") == [approval]
        finally:
            client.close()
        assert stack.triggers(case_id)[:2] == ["submit", "approve"]
        approved = stack.service.history(case_id)[1]
        assert approved.idempotency_key == f"event:merchant-portal:{approval['event_id']}"


def test_a_run_takes_batch_after_batch_until_none_is_due_or_its_time_is_up(
    redis_url: str, prefix: str, ledger: RedisUnconfirmedEvents, events: EventService
) -> None:
    # given five events kept and never processed
    producer.publish_events([_event(f"e-{n}") for n in range(5)], redis_url, key_prefix=prefix)
    sent: list[dict[str, Any]] = []
    later = time.time() + AFTER_S + 1
    resender = EventResender(ledger, events, sent.append, AFTER_S, wall=lambda: later)

    # when a run with no time left looks at them two at a time, it stops after one batch
    assert resender.run(batch=2, budget_s=0).resent == 2
    # and a run with time takes the rest, batch after batch (the first two are not due again)
    assert resender.run(batch=2).resent == 3
    assert sorted(e["event_id"] for e in sent) == [f"e-{n}" for n in range(5)]
