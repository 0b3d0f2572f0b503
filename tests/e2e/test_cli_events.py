"""``aftersales events`` as an operator runs it: ingest a file, list the dead letters, replay."""

from __future__ import annotations

import json
import os
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import redis

from tasks import producer
from workflow.events.schema import schema_text

from .support import NOW, CliFn

Submit = Callable[..., int]

#: Who resolves a dead letter, and why (both required and kept).
WHO = ("--actor", "admin:ops-1", "--reason", "checked by hand")


def envelope(event_id: str, type_: str, **fields: Any) -> dict[str, Any]:
    return {
        "event_id": event_id,
        "source": {"parcel": "sf-express", "buyer": "buyer-app"}.get(
            type_.split(".")[0], "merchant-portal"
        ),
        "type": type_,
        "occurred_at": "2026-11-20T10:00:00+08:00",
        **fields,
    }


def jsonl(path: Path, *lines: dict[str, Any] | str) -> str:
    path.write_text(
        "".join((line if isinstance(line, str) else json.dumps(line)) + "\n" for line in lines),
        encoding="utf-8",
    )
    return str(path)


def test_ingest_a_file_then_work_the_dead_letters(
    cli: CliFn, invoke: CliFn, submitted: Submit, tmp_path: Path
) -> None:
    # given a case, and a day's events for it: one repeated, one too early, one unreadable,
    # one for a case we do not have
    case_id = submitted()
    merchant = {"merchant_id": "m1"}
    approval = envelope("m-1", "merchant.approved", case_id=case_id, data=merchant)
    early = envelope("m-2", "merchant.inspected", case_id=case_id, data=merchant)
    path = jsonl(
        tmp_path / "events.jsonl",
        approval,
        approval,
        early,
        # the buyer app tells the return's tracking number: the carrier's news must name it
        envelope(
            "b-1",
            "buyer.return_shipped",
            case_id=case_id,
            data={"buyer_id": "b1", "tracking_no": "SF100"},
        ),
        envelope("c-1", "parcel.delivered", order_id="o-1", tracking_no="SF100"),
        "{not json",
        "",
        envelope("c-2", "parcel.lost", case_id=999),
    )

    # when the operator ingests the file (a real process)
    result = cli("--now", NOW, "events", "ingest", path, "--json")

    # then every line has an outcome and the bad ones became dead letters
    assert result.code == 0, result.stderr
    report = result.json()
    assert report["summary"] == {
        "applied": 3,
        "duplicate": 1,
        "ignored": 0,
        "dead_lettered": 3,
        "total": 7,
    }
    outcomes = {o["line"]: o for o in report["outcomes"]}
    assert outcomes[2]["status"] == "duplicate"
    assert (outcomes[5]["trigger"], outcomes[5]["implied"]) == ("record_return_delivery", [])
    assert outcomes[5]["state"] == "return_delivered"
    assert (outcomes[3]["code"], outcomes[6]["code"], outcomes[8]["code"]) == (
        "not_allowed",
        "invalid_input",
        "not_found",
    )

    # and they are listed with their codes and reasons
    listed = cli("events", "dead-letters", "--json")
    assert listed.code == 0, listed.stderr
    letters = listed.json()["dead_letters"]
    assert [(letter["event_id"], letter["code"]) for letter in letters] == [
        ("m-2", "not_allowed"),
        (None, "invalid_input"),
        ("c-2", "not_found"),
    ]
    assert letters[0]["envelope"] == early and letters[0]["attempts"] == 1
    assert letters[1]["envelope"] == {"raw": "{not json"}
    assert listed.json()["next_after"] is None

    # when the merchant confirms receipt, the early inspection replays
    confirmed = invoke(
        "--now", NOW, "case", "fire", str(case_id), "confirm_receipt", "--actor", "merchant:m1"
    )
    assert confirmed.code == 0, confirmed.stderr
    replayed = cli("--now", NOW, "events", "replay", str(letters[0]["id"]), *WHO, "--json")
    assert replayed.code == 0, replayed.stderr
    assert (replayed.json()["status"], replayed.json()["trigger"]) == ("applied", "inspect")
    shown = invoke("case", "show", str(case_id), "--json").json()
    assert shown["state"] == "refunding"

    # and the letter for the unknown case still fails: the error's exit code, one more attempt
    again = cli("events", "replay", str(letters[2]["id"]), *WHO, "--json")
    assert again.code == 3
    assert again.stdout == ""
    assert again.error()["code"] == "not_found" and again.error()["letter_id"] == letters[2]["id"]

    # and the unreadable one is discarded
    discarded = cli("events", "discard", str(letters[1]["id"]), *WHO)
    assert discarded.code == 0, discarded.stderr
    after = invoke("events", "dead-letters", "--status", "all", "--json").json()["dead_letters"]
    assert [(letter["status"], letter["attempts"]) for letter in after] == [
        ("replayed", 1),
        ("discarded", 1),
        ("open", 2),
    ]


def test_ingest_prints_a_summary_for_people_and_reads_stdin(
    invoke: CliFn, submitted: Submit
) -> None:
    case_id = submitted()
    lines = "\n".join(
        json.dumps(
            envelope(f"m-{n}", "merchant.approved", case_id=case_id, data={"merchant_id": "m1"})
        )
        for n in range(25)
    )

    result = invoke("--now", NOW, "events", "ingest", "-", input=lines + "\n")

    assert result.code == 0, result.stderr
    assert "25 events from stdin: 1 applied, 24 ignored" in result.stdout
    assert "already approved" in result.stdout


def test_dead_letters_page_and_mask_bank_accounts(invoke: CliFn, tmp_path: Path) -> None:
    account = {
        "buyer_id": "b1",
        "holder": "Li Lei",
        "bank": "ICBC",
        "account_no": "6222020200112233",
    }
    path = jsonl(
        tmp_path / "e.jsonl",
        *(
            envelope(f"b-{n}", "buyer.bank_account_provided", case_id=50 + n, data=account)
            for n in range(3)
        ),
    )
    assert invoke("--now", NOW, "events", "ingest", path).code == 0

    page = invoke("events", "dead-letters", "--limit", "2", "--json").json()
    rest = invoke("events", "dead-letters", "--after", str(page["next_after"]), "--json").json()

    assert [letter["event_id"] for letter in page["dead_letters"] + rest["dead_letters"]] == [
        "b-0",
        "b-1",
        "b-2",
    ]
    assert page["dead_letters"][0]["envelope"]["data"]["account_no"] == "************2233"
    table = invoke("events", "dead-letters")
    assert (
        table.code == 0 and "not_found" in table.stdout and "6222020200112233" not in table.stdout
    )


def test_errors_are_one_line(invoke: CliFn, tmp_path: Path) -> None:
    missing = invoke("events", "ingest", str(tmp_path / "nope.jsonl"))
    assert missing.code == 2 and missing.stderr.startswith("error: no such file")
    unknown = invoke("events", "replay", "77", *WHO, "--json")
    assert unknown.code == 3 and unknown.error()["code"] == "not_found"


def test_schema_prints_the_committed_schema(invoke: CliFn) -> None:
    result = invoke("events", "schema")
    assert result.code == 0 and result.stdout == schema_text()


def test_unconfirmed_shows_the_producers_ledger_on_redis(
    invoke: CliFn, monkeypatch: pytest.MonkeyPatch
) -> None:
    url = os.environ.get("AFTERSALES_TEST_REDIS_URL")
    if not url:
        pytest.skip("AFTERSALES_TEST_REDIS_URL is not set")
    # given a Redis broker (a key prefix of the test's own) and two events a producer kept,
    # one of them sent long ago and never processed
    prefix = f"aftersales-test:{uuid.uuid4().hex}:"
    monkeypatch.setenv("AFTERSALES_BROKER_URL", url)
    monkeypatch.setenv("AFTERSALES_BROKER_KEY_PREFIX", prefix)
    client = redis.Redis.from_url(url)
    try:
        for event_id in ("old", "new"):
            kept = envelope(event_id, "parcel.delivered", case_id=1)
            producer.publish_event(kept, url, queue="nowhere", key_prefix=prefix)
        member = producer.unconfirmed_member("sf-express", "old")
        client.zadd(prefix + producer.UNCONFIRMED_KEY, {member: time.time() - 3600}, xx=True)

        # when the operator looks
        result = invoke("events", "unconfirmed", "--json")
        text = invoke("events", "unconfirmed")

        # then both are counted and the old one is listed as due
        assert result.code == 0 and text.code == 0
        report = result.json()
        assert report["ledger"]["kept"] == 2 and report["ledger"]["due"] == 1
        assert report["due"] == [
            {"source": "sf-express", "event_id": "old", "type": "parcel.delivered", "resends": 0}
        ]
        assert "2 kept, 1 not processed 60 s after they were sent" in text.stdout
    finally:
        keys = list(client.scan_iter(match=f"{prefix}*"))
        if keys:
            client.delete(*keys)
        client.close()


def test_unconfirmed_says_there_is_no_ledger_without_redis(
    invoke: CliFn, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("AFTERSALES_BROKER_URL", raising=False)  # the embedded broker
    result = invoke("events", "unconfirmed", "--json")
    assert result.code == 0 and result.json() == {"ledger": None}


def test_the_history_shows_each_transitions_source(
    invoke: CliFn, submitted: Submit, tmp_path: Path
) -> None:
    # given a case approved by the merchant portal's event, then cancelled at the command line
    case_id = submitted()
    approval = envelope("m-1", "merchant.approved", case_id=case_id, data={"merchant_id": "m1"})
    ingested = invoke("--now", NOW, "events", "ingest", jsonl(tmp_path / "e.jsonl", approval))
    assert ingested.code == 0, ingested.stderr
    fired = invoke("--now", NOW, "case", "fire", str(case_id), "cancel", "--actor", "buyer:b1")
    assert fired.code == 0, fired.stderr

    # when the operator reads its history
    history = invoke("case", "history", str(case_id), "--json").json()
    table = invoke("case", "history", str(case_id))

    # then each record names who acted and the channel it came through
    assert [(r["trigger"], r["actor"], r["source"]) for r in history[1:]] == [
        ("approve", "merchant:m1", "event merchant-portal/m-1"),
        ("cancel", "buyer:b1", "cli"),
    ]
    assert "event merchant-portal/m-1" in table.stdout and "cli" in table.stdout
