"""What people read: one display zone for every time (refusals included), stored text that
cannot drive the terminal, tables that keep their ids at 80 columns, help without ``<bool>``,
and the timer commands that say what they left."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from entrypoints import composition
from entrypoints.cli import common
from workflow import channels
from workflow.clock import FakeClock

from .support import NOW, CliFn, Run, application

Submit = Callable[..., int]
ImportOrders = Callable[..., None]
#: NOW plus the merchant's 48 h: when the review deadline of a case submitted at NOW falls due.
REVIEW_DUE_LOCAL = "2026-11-22 10:00 +08:00"
REVIEW_DUE_UTC_ISO = "2026-11-22T02:00:00+00:00"
AFTER_REVIEW = "2026-11-23T10:00:00+08:00"


def one_line(result: Run, code: int) -> str:
    assert result.code == code, (result.stdout, result.stderr)
    assert "Traceback" not in result.stderr
    [line] = result.stderr.splitlines()
    return line


# -- one display zone --------------------------------------------------------------------------


def test_a_refusal_shows_its_time_in_the_display_zone(
    invoke: CliFn, submitted: Submit, monkeypatch: pytest.MonkeyPatch
) -> None:
    # given a case whose review deadline has passed
    case_id = str(submitted())
    late_reject = ("--now", AFTER_REVIEW, "case", "fire", case_id, "reject", "--actor")
    late_reject += ("merchant:m1", "--reason", "too late")

    # when the merchant rejects it now: in the default zone, in another, and as JSON
    default = one_line(invoke(*late_reject), 7)
    monkeypatch.setenv("AFTERSALES_DISPLAY_TZ", "America/New_York")
    new_york = one_line(invoke(*late_reject), 7)
    as_json = invoke("--json", *late_reject)

    # then people read the deadline as the cards show it; JSON keeps UTC
    assert f"deadline passed at {REVIEW_DUE_LOCAL};" in default
    assert "deadline passed at 2026-11-21 21:00 -05:00;" in new_york
    assert REVIEW_DUE_UTC_ISO in as_json.error()["message"]


def test_an_extension_refusal_shows_both_times_in_the_display_zone(
    invoke: CliFn, submitted: Submit
) -> None:
    case_id = str(submitted())
    result = invoke(
        "--now", NOW, "case", "extend-deadline", case_id, "--actor", "admin",
        "--reason", "r", "--until", "2026-11-21T10:00:00+08:00",
    )  # fmt: skip
    line = one_line(result, 2)
    expected = f"2026-11-21 10:00 +08:00 is not after the current deadline {REVIEW_DUE_LOCAL}"
    assert expected in line


def test_every_time_shown_is_in_the_configured_zone(
    invoke: CliFn, submitted: Submit, monkeypatch: pytest.MonkeyPatch
) -> None:
    # given a case, a token, and a zone five hours behind UTC
    case_id = str(submitted())
    assert invoke("tokens", "create", "--role", "admin").code == 0
    monkeypatch.setenv("AFTERSALES_DISPLAY_TZ", "-05:00")

    # when people read the case, its history, the list, the due timers and the tokens
    outputs = {
        "card": invoke("case", "show", case_id, "--history").stdout,
        "list": invoke("case", "list").stdout,
        "due": invoke("--now", AFTER_REVIEW, "timers", "due").stdout,
        "tokens": invoke("tokens", "list").stdout,
    }

    # then every time carries -05:00 (or the header names it) and none +08:00
    for what, text in outputs.items():
        assert "+08:00" not in text, (what, text)
        assert "-05:00" in text, (what, text)
    assert "2026-11-21 21:00 -05:00" in outputs["card"]  # the review deadline
    assert "when (-05:00)" in outputs["card"]


def test_an_unknown_display_zone_is_one_line(
    invoke: CliFn, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AFTERSALES_DISPLAY_TZ", "Mars/Olympus_Mons")
    line = one_line(invoke("case", "list"), 2)
    assert "neither a UTC offset like +08:00 nor a zone name" in line


# -- stored text cannot drive the terminal ----------------------------------------------------

ESCAPES = "\x1b[2J\x1b]0;owned\x07\x9b31m\u202e"


def test_escape_sequences_and_newlines_are_shown_escaped(
    invoke: CliFn, tmp_path: Path, import_orders: ImportOrders
) -> None:
    # given a description that would clear the screen and retitle the window, and a reason
    # whose line break would forge a history row
    import_orders(application())
    description = f"too small{ESCAPES} end"
    forged = "ok\n3   2026-11-20 10:05   ●   admin   cli   refund  approved → refunded"
    submitted = invoke(
        "--now", NOW, "case", "submit", "-",
        input=json.dumps(application(description=description)),
    )  # fmt: skip
    assert submitted.code == 0, submitted.stderr
    case_id = str(re.findall(r"case (\d+)", submitted.stdout)[0])
    fired = invoke(
        "--now", NOW, "case", "fire", case_id, "approve",
        "--actor", "merchant:m1", "--reason", forged,
    )  # fmt: skip
    assert fired.code == 0, fired.stderr

    # when people read the card and the history
    card = invoke("case", "show", case_id, "--history").stdout

    # then no control character reaches the terminal, the escapes are visible as such, and
    # the history has exactly its two rows
    assert not re.search("[\x00-\x08\x0b-\x1f\x7f-\x9f\u202e]", card)
    assert "\\x1b[2J\\x1b]0;owned\\x07\\x9b31m\\u202e end" in card
    assert "ok\\n3   2026-11-20 10:05" in card
    rows = [line for line in card.splitlines() if re.match(r"^\s*\d+\s+2026-", line)]
    assert len(rows) == 2, card

    # and JSON keeps the data itself, with the characters a terminal acts on escaped
    raw = invoke("case", "show", case_id, "--json").stdout
    assert not re.search("[\x7f-\x9f\u202e]", raw)
    assert json.loads(raw)["description"] == description


def test_error_lines_escape_what_the_user_typed(invoke: CliFn) -> None:
    # given an order id whose backspaces and right-to-left override would disguise the line
    typed = "o-1\x08\x08\x08\u202eevil"
    # when it is not found, then the one error line shows them as escapes
    result = invoke("orders", "show", typed)
    line = one_line(result, 3)
    assert "\x08" not in line and "\u202e" not in line
    assert "o-1\\x08\\x08\\x08\\u202eevil" in line


# -- tables at 80 columns ---------------------------------------------------------------------


def test_case_list_keeps_the_id_column_at_80_columns(
    invoke: CliFn, submitted: Submit, monkeypatch: pytest.MonkeyPatch
) -> None:
    # given cases with long ids in the other columns
    ids = [submitted(order_id=f"order-with-a-long-name-{n}") for n in range(3)]
    monkeypatch.setattr(common, "PIPE_WIDTH", 80)

    # when listed on an 80-column screen
    table = invoke("case", "list").stdout

    # then every row starts with its id, whole, and nothing is wider than the screen
    rows = [line.split() for line in table.splitlines() if re.match(r"^\s+\d+\s", line)]
    assert [int(row[0]) for row in rows] == ids, table
    assert max(len(line) for line in table.splitlines()) <= 80


def test_timer_tables_keep_their_ids_at_80_columns(
    invoke: CliFn, submitted: Submit, monkeypatch: pytest.MonkeyPatch
) -> None:
    ids = [submitted(order_id=f"o-{n}") for n in range(2)]
    monkeypatch.setattr(common, "PIPE_WIDTH", 80)
    due = invoke("--now", AFTER_REVIEW, "timers", "due").stdout
    ran = invoke("--now", AFTER_REVIEW, "timers", "run-due").stdout
    for text in (due, ran):
        rows = [line.split() for line in text.splitlines() if re.match(r"^\s+\d+\s+\d+\s", line)]
        assert sorted(int(row[1]) for row in rows) == ids, text


# -- help ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("args", [(), ("case", "show"), ("timers", "run-due")])
def test_help_shows_flags_without_a_value_type(invoke: CliFn, args: tuple[str, ...]) -> None:
    result = invoke(*args, "--help")
    assert result.code == 0
    assert "--json" in result.stdout
    assert "<bool>" not in result.stdout


# -- tokens list --------------------------------------------------------------------------------


def test_tokens_list_has_a_header(invoke: CliFn) -> None:
    assert invoke("tokens", "create", "--role", "merchant:m1", "--name", "shop").code == 0
    listed = invoke("tokens", "list").stdout
    header = next(line for line in listed.splitlines() if line.strip())
    assert header.split() == ["id", "role", "name", "created", "status", "last", "used"]
    assert "merchant:m1" in listed and "live" in listed


# -- timers -------------------------------------------------------------------------------------


def test_due_says_when_more_are_due_than_listed(invoke: CliFn, submitted: Submit) -> None:
    for n in range(3):
        submitted(order_id=f"o-{n}")
    listed = invoke("--now", AFTER_REVIEW, "timers", "due", "--limit", "2", "--json").json()
    everything = invoke("--now", AFTER_REVIEW, "timers", "due", "--limit", "3", "--json").json()
    human = invoke("--now", AFTER_REVIEW, "timers", "due", "--limit", "2").stdout

    assert (len(listed["timers"]), listed["more"]) == (2, True)
    assert (len(everything["timers"]), everything["more"]) == (3, False)
    assert "more timers are due than these 2" in human


def test_run_due_with_a_limit_says_how_many_remain(invoke: CliFn, submitted: Submit) -> None:
    for n in range(3):
        submitted(order_id=f"o-{n}")
    first = invoke("--now", AFTER_REVIEW, "timers", "run-due", "--limit", "2")
    rest = invoke("--now", AFTER_REVIEW, "timers", "run-due", "--json").json()

    assert "fired 2 of 2 due timers" in first.stdout
    assert "1 still due: --limit reached" in first.stdout
    assert [run["fired"] for run in rest["runs"]] == [True]
    assert rest["remaining"] == 0


def test_run_due_fires_until_none_is_due(
    cli: CliFn, env: dict[str, str], import_orders: ImportOrders
) -> None:
    # given more due timers than the old fixed limit of 1,000 (cases made in-process: fast)
    count = 1_005
    apps = [application(order_id=f"o-{n}") for n in range(count)]
    import_orders(*apps[:500])
    import_orders(*apps[500:])
    service = composition.build_service(
        composition.load_settings(), FakeClock(datetime.fromisoformat(NOW))
    )
    for app in apps:
        service.submit(app, None, None, source=channels.CLI)

    # when the due timers are run once
    ran = cli("--now", AFTER_REVIEW, "timers", "run-due")

    # then every one fired, and none is left
    assert ran.code == 0, ran.stderr
    assert f"fired {count} of {count} due timers" in ran.stdout
    assert "still due" not in ran.stdout
    left: Any = cli("--now", AFTER_REVIEW, "timers", "due", "--json").json()
    assert left == {"timers": [], "more": False}
