"""``aftersales outbox parked | retry`` as an operator runs them, on rows the relay parked."""

from __future__ import annotations

import os
from datetime import UTC, datetime, timedelta

import pytest
import sqlalchemy as sa

from persistence.db import make_engine
from persistence.migrate import ensure_schema
from persistence.tables import outbox_retries
from persistence.unit_of_work import SqlUnitOfWorkFactory
from workflow.model import OutboxMessage

from .support import CliFn

T0 = datetime(2026, 11, 20, 2, 0, tzinfo=UTC)
WHO = ("--actor", "admin:ops-1", "--reason", "notifier fixed")


@pytest.fixture
def parked_ids(env: dict[str, str]) -> list[int]:
    """Three notices the relay published and parked (ids 1-3), and one still pending (4)."""
    url = os.environ["AFTERSALES_DATABASE_URL"]
    ensure_schema(url)
    uow_factory = SqlUnitOfWorkFactory(make_engine(url))
    with uow_factory() as uow:
        uow.outbox.add([OutboxMessage("case.transitioned", 7, {"n": n}, T0) for n in range(4)])
        uow.commit()
    with uow_factory() as uow:
        entries = uow.outbox.unpublished(10)
        uow.outbox.mark_published([entry.id for entry in entries], T0)
        uow.outbox.park([entry.id for entry in entries[:3]], T0 + timedelta(minutes=10))
        uow.commit()
    return [entry.id for entry in entries[:3]]


def _retries(url: str) -> list[tuple[int, str, str]]:
    with make_engine(url).connect() as connection:
        rows = connection.execute(
            sa.select(
                outbox_retries.c.outbox_id, outbox_retries.c.retried_by, outbox_retries.c.reason
            ).order_by(outbox_retries.c.id)
        ).all()
    return [(row[0], row[1], row[2]) for row in rows]


def test_list_the_parked_rows_then_retry_one_and_then_all(
    cli: CliFn, invoke: CliFn, parked_ids: list[int]
) -> None:
    # given three parked rows: the list shows them, with their tries and parking time (+08:00)
    listed = cli("outbox", "parked")
    assert listed.code == 0, listed.stderr
    assert "case.transitioned" in listed.stdout and "10:10 +08:00" in listed.stdout
    page = invoke("outbox", "parked", "--limit", "2", "--json").json()
    assert [entry["id"] for entry in page["parked"]] == parked_ids[:2]
    assert page["next_after"] == parked_ids[1]
    assert page["parked"][0]["attempts"] == 1
    assert page["parked"][0]["parked_at"] == "2026-11-20T02:10:00Z"
    rest = invoke("outbox", "parked", "--after", str(parked_ids[1]), "--json").json()
    assert [entry["id"] for entry in rest["parked"]] == parked_ids[2:]

    # when an admin retries the first (naming the pending fourth too)
    retried = cli("outbox", "retry", str(parked_ids[0]), "4", *WHO)

    # then it is retried, the fourth is said not parked, and the retry is on record
    assert retried.code == 0, retried.stderr
    assert "1 outbox entry retried by admin:ops-1" in retried.stdout
    assert "not parked (unknown, completed or retried already): [4]" in retried.stdout
    url = os.environ["AFTERSALES_DATABASE_URL"]
    assert _retries(url) == [(parked_ids[0], "admin:ops-1", "notifier fixed")]
    remaining = invoke("outbox", "parked", "--json").json()["parked"]
    assert [entry["id"] for entry in remaining] == parked_ids[1:]

    # when all the others are retried at once
    everything = invoke("outbox", "retry", "--all", *WHO, "--json")

    # then none is left parked
    assert everything.code == 0, everything.stderr
    assert [entry["id"] for entry in everything.json()["retried"]] == parked_ids[1:]
    assert invoke("outbox", "parked").stdout.strip() == "no parked outbox entries"
    assert [outbox_id for outbox_id, _, _ in _retries(url)] == parked_ids


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (("1", "--actor", "merchant:m1", "--reason", "x"), 2, "retried by an admin"),
        (("1", "--actor", "admin", "--reason", " "), 2, "give a reason"),
        (("--actor", "admin", "--reason", "x"), 2, "name the entries to retry, or --all"),
        (("1", "--all", "--actor", "admin", "--reason", "x"), 2, "not both"),
        (("99", "--actor", "admin", "--reason", "x"), 3, "no parked outbox entry among [99]"),
        (("9223372036854775808", "--actor", "admin", "--reason", "x"), 2, "9223372036854775807"),
    ],
)
def test_a_refused_retry_says_why_in_one_line_and_changes_nothing(
    cli: CliFn, parked_ids: list[int], args: tuple[str, ...], code: int, message: str
) -> None:
    result = cli("outbox", "retry", *args)
    assert result.code == code, (result.stdout, result.stderr)
    assert message in result.stderr + result.stdout
    assert "Traceback" not in result.stderr
    assert _retries(os.environ["AFTERSALES_DATABASE_URL"]) == []
