"""The ``aftersales`` command as a user runs it: JSON shapes, time travel, errors, the demo."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path

import pytest
from broker_peek import queued_task_names

from config.settings import DatabaseSettings, Settings, sqlite_url
from tasks.kick import RELAY_TASK
from workflow.diagram import mermaid
from workflow.states import CaseType

from .support import NOW, CliFn, Run, application, one_line_error

ImportOrders = Callable[..., None]

CASE_KEYS = {
    "id",
    "type",
    "state",
    "version",
    "order_id",
    "buyer_id",
    "merchant_id",
    "category",
    "reason",
    "refund_amount",
    "refund_route",
    "deadline",
    "items",
    "gifts",
    "payment",
    "delivered_at",
    "created_at",
    "updated_at",
    "details",
}
ENTRY_KEYS = {"seq", "trigger", "from_state", "to_state", "actor", "source", "reason", "at", "data"}

Submit = Callable[..., int]


def assert_one_line_error(result: Run, code: int) -> str:
    """A user error: ``one_line_error``, and nothing on stdout."""
    line = one_line_error(result, code)
    assert result.stdout == ""
    return line


# -- submitting -----------------------------------------------------------------------------


def test_submit_from_a_file_prints_the_created_case(
    cli: CliFn, tmp_path: Path, import_orders: ImportOrders
) -> None:
    # given an application in a file, its order imported
    import_orders(application())
    (tmp_path / "app.json").write_text(json.dumps(application()), encoding="utf-8")

    # when the buyer submits it (a real process, on the embedded SQLite file it creates)
    result = cli("--now", NOW, "case", "submit", "app.json", "--json")

    # then the case comes back with its 48 h review deadline, money in fen, times in UTC
    assert result.code == 0, result.stderr
    case = result.json()
    assert case.keys() >= CASE_KEYS
    assert case["state"] == "submitted"
    assert case["version"] == 1
    assert case["refund_amount"] == 19900
    assert case["deadline"] == {
        "kind": "merchant_review",
        "due_at": "2026-11-22T02:00:00Z",
        "trigger": "auto_approve",
    }
    assert case["payment"] == {
        "channel": "wechat_pay",
        "amount": 19900,
        "paid_at": "2026-11-15T02:00:00Z",
    }
    assert case["items"][0]["unit_price"] == 19900
    assert case["gifts"] == [{"sku": "scarf", "quantity": 1, "value": 500}]
    assert case["created_at"] == "2026-11-20T02:00:00Z"


def test_submit_from_stdin(cli: CliFn, invoke: CliFn, import_orders: ImportOrders) -> None:
    # given an application piped in, once with "-" and once with no FILE at all
    import_orders(application(), application(order_id="o-2"))
    piped = json.dumps(application())

    # when
    dash = cli("--now", NOW, "case", "submit", "-", "--json", input=piped)
    bare = invoke(
        "--now", NOW, "case", "submit", "--json", input=json.dumps(application(order_id="o-2"))
    )

    # then both created a case
    assert dash.code == 0, dash.stderr
    assert bare.code == 0, bare.stderr
    assert (dash.json()["order_id"], bare.json()["order_id"]) == ("o-1", "o-2")


def test_submit_with_the_same_idempotency_key_returns_the_first_case(
    invoke: CliFn, import_orders: ImportOrders
) -> None:
    # given
    import_orders(application())
    body = json.dumps(application())
    first = invoke("--now", NOW, "case", "submit", "--idempotency-key", "k-1", "--json", input=body)

    # when the client retries the same request
    again = invoke("--now", NOW, "case", "submit", "--idempotency-key", "k-1", "--json", input=body)

    # then no second case exists
    assert again.code == 0, again.stderr
    assert again.json()["id"] == first.json()["id"]
    assert len(invoke("case", "list", "--json").json()["cases"]) == 1


def test_human_output_shows_yuan_and_relative_deadline(invoke: CliFn, submitted: Submit) -> None:
    case_id = submitted()

    card = invoke("--now", NOW, "case", "show", str(case_id))
    late = invoke("--now", "2026-11-22T11:00:00+08:00", "case", "show", str(case_id))

    assert card.code == 0, card.stderr
    assert "¥199.00" in card.stdout
    assert "in 2d" in card.stdout
    assert "merchant_review" in card.stdout
    assert "overdue by 1h" in late.stdout


# -- reading --------------------------------------------------------------------------------


def test_show_json_is_the_same_globally_and_per_command(invoke: CliFn, submitted: Submit) -> None:
    case_id = submitted()

    per_command = invoke("case", "show", str(case_id), "--json")
    global_flag = invoke("--json", "case", "show", str(case_id))

    assert per_command.code == global_flag.code == 0
    assert per_command.json() == global_flag.json()
    assert per_command.json().keys() >= CASE_KEYS


def test_list_pages_with_a_next_page_hint(invoke: CliFn, submitted: Submit) -> None:
    # given three cases
    ids = [submitted(order_id=f"o-{n}") for n in range(3)]

    # when listing two per page
    first = invoke("case", "list", "--limit", "2", "--json").json()
    second = invoke("case", "list", "--limit", "2", "--after", str(ids[1]), "--json").json()
    human = invoke("case", "list", "--limit", "2", "--merchant", "m1")

    # then the pages split at the second case and the last page says there is no more
    assert [c["id"] for c in first["cases"]] == ids[:2]
    assert first["next_after"] == ids[1]
    assert [c["id"] for c in second["cases"]] == ids[2:]
    assert second["next_after"] is None
    assert f"aftersales case list --merchant m1 --limit 2 --after {ids[1]}" in human.stdout


def test_list_filters_by_state_and_type(invoke: CliFn, submitted: Submit) -> None:
    kept = submitted(order_id="o-kept")
    moved = submitted(order_id="o-moved")
    invoke("--now", NOW, "case", "fire", str(moved), "approve", "--actor", "merchant:m1")

    found = invoke("case", "list", "--state", "submitted", "--type", "return_refund", "--json")

    assert [c["id"] for c in found.json()["cases"]] == [kept]


def test_fire_triggers_and_history(cli: CliFn, submitted: Submit) -> None:
    case_id = str(submitted())

    # given the merchant's options on a fresh case
    triggers = cli("case", "triggers", case_id, "--actor", "merchant:m1", "--json")
    assert triggers.code == 0, triggers.stderr
    assert triggers.json() == ["approve", "reject"]

    # when the merchant approves
    fired = cli(
        "--now", "2026-11-20T12:00:00+08:00", "case", "fire", case_id, "approve",
        "--actor", "merchant:m1", "--expected-version", "1", "--json",
    )  # fmt: skip

    # then the case moved, with the transition it wrote and the next deadline
    assert fired.code == 0, fired.stderr
    body = fired.json()
    assert body["replayed"] is False
    assert body["case"]["state"] == "approved"
    assert body["case"]["version"] == 2
    assert body["case"]["deadline"]["kind"] == "return_shipment"
    assert [t["trigger"] for t in body["transitions"]] == ["approve"]

    history = cli("case", "history", case_id, "--json")
    assert history.code == 0, history.stderr
    entries = history.json()
    assert [set(entry) for entry in entries] == [ENTRY_KEYS, ENTRY_KEYS]
    assert [(e["seq"], e["trigger"], e["from_state"], e["to_state"]) for e in entries] == [
        (1, "submit", None, "submitted"),
        (2, "approve", "submitted", "approved"),
    ]
    assert entries[1]["actor"] == "merchant:m1"
    assert entries[1]["at"] == "2026-11-20T04:00:00Z"

    timeline = cli("case", "history", case_id)
    assert "approve" in timeline.stdout
    assert "submitted → approved" in timeline.stdout


def test_fire_with_data_follow_ups_and_gift_deduction(invoke: CliFn, submitted: Submit) -> None:
    case_id = str(submitted())
    steps = [
        ("approve", "merchant:m1", None),
        ("ship_back", "buyer:b1", '{"tracking_no": "SF123"}'),
        ("confirm_receipt", "merchant:m1", None),
        ("inspect", "merchant:m1", '{"gifts_missing": ["scarf"]}'),
    ]
    for trigger, actor, data in steps:
        args = ["--now", NOW, "case", "fire", case_id, trigger, "--actor", actor, "--json"]
        result = invoke(*args, *(["--data", data] if data else []))
        assert result.code == 0, result.stderr

    body = result.json()
    # inspect brings start_refund along in the same transaction
    assert [t["trigger"] for t in body["transitions"]] == ["inspect", "start_refund"]
    assert body["case"]["state"] == "refunding"
    assert body["case"]["refund_amount"] == 19400
    assert body["case"]["refund_route"] == "original_channel"


def test_replayed_fire_with_the_same_key_changes_nothing(invoke: CliFn, submitted: Submit) -> None:
    case_id = str(submitted())
    args = ["case", "fire", case_id, "approve", "--actor", "merchant:m1", "--idempotency-key", "a1"]

    first = invoke("--now", NOW, *args, "--json")
    again = invoke("--now", NOW, *args, "--json")

    assert first.code == again.code == 0
    assert again.json()["replayed"] is True
    assert again.json()["case"]["version"] == first.json()["case"]["version"] == 2


def test_bank_account_is_masked_everywhere(invoke: CliFn, submitted: Submit) -> None:
    # given a refund-only case paid more than 365 days ago: WeChat Pay can no longer refund
    case_id = str(
        submitted(
            type="refund_only",
            reason="not_received",
            delivered_at=None,
            payment={
                "channel": "wechat_pay",
                "amount": 45800,
                "paid_at": "2025-11-01T10:00:00+08:00",
            },
            items=[{"sku": "lamp", "quantity": 1, "unit_price": 45800}],
            gifts=[],
        )
    )
    approved = invoke(
        "--now", NOW, "case", "fire", case_id, "approve", "--actor", "merchant:m1", "--json"
    )
    assert approved.json()["case"]["state"] == "awaiting_bank_account"

    # when the buyer gives a bank account
    account = '{"holder": "Li Wei", "bank": "ICBC", "account_no": "6222020200112233"}'
    invoke(
        "--now", NOW, "case", "fire", case_id, "provide_bank_account",
        "--actor", "buyer:b1", "--data", account,
    )  # fmt: skip

    # then only its last 4 digits are ever shown
    shown = invoke("case", "show", case_id, "--json").json()
    assert shown["state"] == "refunding"
    assert shown["refund_route"] == "bank_transfer"
    assert shown["details"]["bank_account"]["account_no"] == "************2233"
    history = invoke("case", "history", case_id, "--json").json()
    assert history[-1]["data"]["account_no"] == "************2233"
    for output in (
        invoke("case", "show", case_id).stdout,
        invoke("case", "history", case_id).stdout,
    ):
        assert "6222020200112233" not in output
        assert "2233" in output


def test_extend_deadline(invoke: CliFn, submitted: Submit) -> None:
    case_id = str(submitted())

    extended = invoke(
        "--now", NOW, "case", "extend-deadline", case_id,
        "--actor", "admin", "--reason", "public holiday", "--hours", "24", "--json",
    )  # fmt: skip
    by_buyer = invoke(
        "case", "extend-deadline", case_id, "--actor", "buyer:b1", "--reason", "x", "--hours", "1"
    )

    assert extended.code == 0, extended.stderr
    assert extended.json()["case"]["deadline"]["due_at"] == "2026-11-23T02:00:00Z"
    assert extended.json()["transitions"][0]["reason"] == "public holiday"
    assert "only an admin" in assert_one_line_error(by_buyer, 4)


# -- time travel and timers -------------------------------------------------------------------


def test_now_makes_a_timer_due_and_run_due_fires_it(cli: CliFn, submitted: Submit) -> None:
    # given a case submitted at NOW: the merchant has 48 h to review
    case_id = submitted()

    # when one day has passed, nothing is due; after 49 hours the review timer is an hour late
    early = cli("--now", "2026-11-21T10:00:00+08:00", "timers", "due", "--json")
    late = cli("--now", "2026-11-22T11:00:00+08:00", "timers", "due", "--json")
    as_of = cli("timers", "due", "--as-of", "2026-11-22T11:00:00+08:00", "--json")
    table = cli("--now", "2026-11-22T11:00:00+08:00", "timers", "due")

    assert early.code == 0, early.stderr
    assert early.json() == {"timers": [], "more": False}
    assert late.json()["more"] is False
    [timer] = late.json()["timers"]
    assert timer["case_id"] == case_id
    assert (timer["kind"], timer["trigger"], timer["late_seconds"]) == (
        "merchant_review",
        "auto_approve",
        3600,
    )
    assert as_of.json() == late.json()
    assert "1h" in table.stdout

    # then running the due timers at that time approves the case as the system
    ran = cli("--now", "2026-11-22T11:00:00+08:00", "timers", "run-due", "--json")
    assert ran.code == 0, ran.stderr
    assert ran.json() == {
        "runs": [
            {
                "timer_id": timer["id"],
                "case_id": case_id,
                "kind": "merchant_review",
                "trigger": "auto_approve",
                "fired": True,
                "outcome": "auto_approve: approved",
            }
        ],
        "remaining": 0,
    }
    shown = cli("case", "show", str(case_id), "--json").json()
    assert shown["state"] == "approved"
    assert shown["deadline"]["kind"] == "return_shipment"
    again = cli("--now", "2026-11-22T11:00:00+08:00", "timers", "run-due", "--json")
    assert again.json() == {"runs": [], "remaining": 0}


def test_run_due_fires_many_timers_in_batches(invoke: CliFn, submitted: Submit) -> None:
    # given more due timers than the progress bar threshold
    ids = [submitted(order_id=f"o-{n}") for n in range(30)]

    # when
    ran = invoke("--now", "2026-11-23T10:00:00+08:00", "timers", "run-due")

    # then every case was auto-approved
    assert ran.code == 0, ran.stderr
    assert "fired 30 of 30 due timers" in ran.stdout
    states = {c["state"] for c in invoke("case", "list", "--limit", "50", "--json").json()["cases"]}
    assert states == {"approved"}
    assert len(ids) == 30


# -- errors -------------------------------------------------------------------------------------


def test_unknown_case(cli: CliFn, invoke: CliFn) -> None:
    line = assert_one_line_error(cli("case", "show", "999"), 3)
    assert line == "error: no case 999"
    as_json = invoke("--json", "case", "show", "999")
    assert_one_line_error(as_json, 3)
    assert as_json.error() == {"code": "not_found", "message": "no case 999"}


def test_illegal_trigger_lists_the_allowed_ones(invoke: CliFn, submitted: Submit) -> None:
    case_id = str(submitted())

    human = invoke("case", "fire", case_id, "ship_back", "--actor", "buyer:b1")
    as_json = invoke("case", "fire", case_id, "ship_back", "--actor", "buyer:b1", "--json")

    line = assert_one_line_error(human, 5)
    assert line.startswith("error: ship_back is not allowed for buyer")
    assert line.endswith("allowed now: cancel")
    assert_one_line_error(as_json, 5)
    assert as_json.error()["code"] == "not_allowed"
    assert as_json.error()["allowed"] == ["cancel"]


def test_wrong_actor_is_forbidden(invoke: CliFn, submitted: Submit) -> None:
    case_id = str(submitted())

    result = invoke("case", "fire", case_id, "approve", "--actor", "merchant:someone-else")

    assert "belongs to another merchant" in assert_one_line_error(result, 4)


def test_stale_expected_version_is_a_conflict(invoke: CliFn, submitted: Submit) -> None:
    case_id = str(submitted())
    invoke("--now", NOW, "case", "fire", case_id, "approve", "--actor", "merchant:m1")

    result = invoke(
        "case", "fire", case_id, "ship_back", "--actor", "buyer:b1",
        "--data", '{"tracking_no": "SF1"}', "--expected-version", "1", "--json",
    )  # fmt: skip

    assert_one_line_error(result, 6)
    assert result.error() == {
        "code": "conflict",
        "message": f"case {case_id} is at version 2, not 1",
        "current_version": 2,
    }


def test_policy_refusal_names_the_rule_and_the_dates(
    cli: CliFn, tmp_path: Path, import_orders: ImportOrders
) -> None:
    # given a no-reason return asked for on day 9 after delivery
    import_orders(application())
    (tmp_path / "late.json").write_text(json.dumps(application()), encoding="utf-8")

    # when
    result = cli("--now", "2026-11-27T10:00:00+08:00", "case", "submit", "late.json")

    # then
    line = assert_one_line_error(result, 7)
    assert line == (
        "error: refused by rule no_reason_window: the 7-day no-reason window ran from "
        "2026-11-19 to 2026-11-25 (Asia/Shanghai); applied on 2026-11-27"
    )


@pytest.mark.parametrize(
    ("args", "stdin", "code", "message"),
    [
        pytest.param(
            ["case", "submit", "-"], "{not json", "invalid_json",
            "stdin is not valid JSON", id="malformed-application",
        ),
        pytest.param(
            ["case", "submit", "missing.json"], None, "file_not_found",
            "no such file: missing.json", id="missing-file",
        ),
        pytest.param(
            ["case", "submit", "-"], "[1, 2]", "invalid_input",
            "an application is a JSON object", id="not-an-object",
        ),
        pytest.param(
            ["case", "submit", "-"], json.dumps({**application(), "items": []}), "invalid_input",
            "items:", id="invalid-application",
        ),
        pytest.param(
            ["case", "fire", "1", "approve", "--actor", "merchant:m1", "--data", "{oops"], None,
            "invalid_json", "--data is not valid JSON", id="malformed-data",
        ),
        pytest.param(
            ["case", "fire", "1", "approve", "--actor", "king"], None, "invalid_input",
            "unknown role 'king'", id="unknown-role",
        ),
        pytest.param(
            ["--now", "2026-11-20T10:00:00", "case", "list"], None, "invalid_time",
            "has no timezone", id="naive-now",
        ),
        pytest.param(
            ["case", "show", "abc"], None, "usage",
            "Invalid value for 'ID'", id="unparsable-argument",
        ),
        pytest.param(
            ["case", "fire", "1", "approve"], None, "usage",
            "Missing option '--actor'", id="missing-option",
        ),
        pytest.param(
            ["--now", "next tuesday", "case", "list"], None, "invalid_time",
            "is not an ISO 8601 time", id="garbled-now",
        ),
    ],
)  # fmt: skip
def test_invalid_input_exits_2_with_one_line(
    invoke: CliFn, args: list[str], stdin: str | None, code: str, message: str
) -> None:
    human = invoke(*args, input=stdin)
    as_json = invoke("--json", *args, input=stdin)

    assert message in assert_one_line_error(human, 2)
    assert_one_line_error(as_json, 2)
    assert as_json.error()["code"] == code


def test_malformed_file_in_a_real_process(cli: CliFn, tmp_path: Path) -> None:
    (tmp_path / "broken.json").write_text('{"type": "return_refund",', encoding="utf-8")

    result = cli("case", "submit", "broken.json")

    assert "broken.json is not valid JSON" in assert_one_line_error(result, 2)


def test_unreachable_database_hides_its_password(
    invoke: CliFn, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Port 1 refuses at once: no server needed to see the error path.
    monkeypatch.setenv("AFTERSALES_DATABASE_URL", "postgresql://app:s3cret@127.0.0.1:1/cases")

    result = invoke("case", "list")

    line = assert_one_line_error(result, 1)
    assert line.startswith("error: database postgresql://app:***@127.0.0.1:1/cases")
    assert "s3cret" not in result.stderr


def test_bad_policy_file_is_a_setup_error(
    invoke: CliFn, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "policy.toml").write_text("no_reason_days = -1\n", encoding="utf-8")
    monkeypatch.setenv("AFTERSALES_POLICY_FILE", str(tmp_path / "policy.toml"))

    result = invoke("case", "list")

    assert "no_reason_days" in assert_one_line_error(result, 1)


def test_policy_file_overrides_apply(
    invoke: CliFn, submitted: Submit, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # given operators who give merchants 72 h to review
    (tmp_path / "policy.toml").write_text(
        "[timers]\nmerchant_review = { hours = 72 }\n", encoding="utf-8"
    )
    monkeypatch.setenv("AFTERSALES_POLICY_FILE", str(tmp_path / "policy.toml"))

    case_id = submitted()

    due_at = invoke("case", "show", str(case_id), "--json").json()["deadline"]["due_at"]
    assert due_at == "2026-11-23T02:00:00Z"


# -- schema -------------------------------------------------------------------------------------


def test_default_database_is_var_aftersales_db_under_the_cwd(
    cli: CliFn, env: dict[str, str], tmp_path: Path
) -> None:
    # given no database configured
    del env["AFTERSALES_DATABASE_URL"]

    # when a command runs in tmp_path
    result = cli("case", "list", "--json")

    # then the embedded SQLite file was created there, with its schema
    assert result.code == 0, result.stderr
    assert result.json() == {"cases": [], "next_after": None}
    assert (tmp_path / "var" / "aftersales.db").is_file()


def test_db_upgrade_on_a_fresh_file(cli: CliFn) -> None:
    result = cli("db", "upgrade")

    assert result.code == 0, result.stderr
    assert "newest schema" in result.stdout


@pytest.mark.postgres
@pytest.mark.skipif(
    not os.environ.get("AFTERSALES_TEST_POSTGRES_URL"),
    reason="needs AFTERSALES_TEST_POSTGRES_URL, e.g. postgresql://postgres@127.0.0.1:5432/postgres",
)
def test_postgres_needs_db_upgrade_first(
    invoke: CliFn, monkeypatch: pytest.MonkeyPatch, import_orders: ImportOrders
) -> None:
    import secrets

    import sqlalchemy as sa

    from persistence.db import dispose_engine, normalize_url

    admin_url = normalize_url(os.environ["AFTERSALES_TEST_POSTGRES_URL"])
    name = f"aftersales_e2e_{secrets.token_hex(4)}"
    admin = sa.create_engine(admin_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.exec_driver_sql(f'CREATE DATABASE "{name}"')
    url = admin_url.set(database=name).render_as_string(hide_password=False)
    monkeypatch.setenv("AFTERSALES_DATABASE_URL", url)
    try:
        # given an empty PostgreSQL database: nothing is created behind the operator's back
        before = invoke("case", "list")
        assert "run `aftersales db upgrade`" in assert_one_line_error(before, 1)

        # when the operator migrates it, then the commands work
        assert invoke("db", "upgrade").code == 0
        import_orders(application())
        submitted = invoke(
            "--now", NOW, "case", "submit", "--json", input=json.dumps(application())
        )
        assert submitted.code == 0, submitted.stderr
        assert invoke("case", "list", "--json").json()["cases"][0]["state"] == "submitted"

        # when a newer release has migrated it further (this one is the old code of a rollout)
        with sa.create_engine(url).begin() as connection:
            connection.exec_driver_sql("UPDATE alembic_version SET version_num = '9999'")
        dispose_engine(url)
        newer = assert_one_line_error(invoke("case", "list"), 1)

        # then it says so, and does not send the operator to an upgrade that cannot work
        assert "at schema revision 9999, which this version does not know" in newer
        assert "db upgrade" not in newer
        assert newer.endswith("a newer version migrated it")
        for command in (("db", "upgrade"), ("db", "check")):
            assert assert_one_line_error(invoke(*command), 1).endswith(
                "a newer version migrated it"
            )
    finally:
        dispose_engine(url)
        with admin.connect() as connection:
            connection.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.dispose()


# -- diagram and demo ---------------------------------------------------------------------------


@pytest.mark.parametrize("case_type", list(CaseType), ids=str)
def test_diagram_prints_the_generated_mermaid(invoke: CliFn, case_type: CaseType) -> None:
    result = invoke("diagram", "--type", case_type.value)

    assert result.code == 0, result.stderr
    assert result.stdout == mermaid(case_type)


def test_demo_runs_to_completion(cli: CliFn, tmp_path: Path) -> None:
    # when the demo runs twice (it recreates its own database each time)
    for _ in range(2):
        result = cli("demo", "--db", str(tmp_path / "demo.db"))
        assert result.code == 0, result.stderr

    # then every case type reached its outcome and the refusal was shown with its rule
    assert "summary" in result.stdout
    for expected in (
        "refunded",
        "exchanged",
        "repaired",
        "awaiting_bank_account",
        "auto_approve",
        "expire_return",
        "refused by rule no_reason_window",
        "¥194.00",
        "************2233",
    ):
        assert expected in result.stdout, expected
    assert "6222020200112233" not in result.stdout


def test_demo_json_summary(invoke: CliFn, tmp_path: Path) -> None:
    result = invoke("demo", "--db", str(tmp_path / "demo.db"), "--json")

    assert result.code == 0, result.stderr
    finals = [(row["type"], row["final_state"]) for row in result.json()]
    assert finals == [
        ("return_refund", "refunded"),
        ("exchange", "exchanged"),
        ("repair", "repaired"),
        ("refund_only", "refunded"),
        ("return_refund", "closed"),
        ("return_refund", "refused"),
    ]


def test_a_cli_transition_kicks_the_relay_in_the_broker(
    cli: CliFn, submitted: Callable[..., int], tmp_path: Path
) -> None:
    # given a submitted case, and the embedded broker's queue drained of the submission's kick
    case_id = submitted()
    settings = Settings(
        database=DatabaseSettings(url=sqlite_url(tmp_path / "var" / "cases.db")), policy_file=None
    )
    assert RELAY_TASK in queued_task_names(settings)
    # when the merchant approves it with the console script (a process that exits at once)
    done = cli("--now", NOW, "case", "fire", str(case_id), "approve", "--actor", "merchant:m1")
    assert done.code == 0, done.stderr
    # then the kick reached the broker before the process exited: the workers relay the
    # pickup booking now, not at the relay's next sweep
    assert queued_task_names(settings) == [RELAY_TASK]
