"""Hostile input on the command line: each is one line on stderr and its exit code, never a
traceback, and changes nothing (docs/cli.md, "Input limits")."""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from config.limits import MAX_DOCUMENT_BYTES, MAX_JSON_DEPTH
from entrypoints import composition
from workflow.clock import FakeClock
from workflow.model import Actor

from .support import NOW, CliFn, application, one_line_error

Submit = Callable[..., int]
ABOVE_BIGINT = str(2**64)  # what SQLite and PostgreSQL refuse to bind: 18446744073709551616


def nested(depth: int) -> str:
    return "[" * depth + "]" * depth


@pytest.mark.parametrize(
    "args",
    [
        ("case", "show", ABOVE_BIGINT),
        ("case", "history", ABOVE_BIGINT),
        ("case", "list", "--after", ABOVE_BIGINT),
        ("case", "fire", ABOVE_BIGINT, "approve", "--actor", "admin", "--reason", "r"),
        ("case", "fire", "1", "approve", "--actor", "admin", "--expected-version", ABOVE_BIGINT),
        ("tokens", "revoke", ABOVE_BIGINT),
        ("events", "replay", ABOVE_BIGINT, "--actor", "admin", "--reason", "r"),
        ("events", "dead-letters", "--after", ABOVE_BIGINT),
    ],
    ids=lambda args: " ".join(args[:2]),
)
def test_ids_beyond_64_bits_are_usage_errors(invoke: CliFn, args: tuple[str, ...]) -> None:
    # when an id no database column can hold is given
    result = invoke(*args)
    # then it is refused before any query, in one line, as a usage error
    line = one_line_error(result, 2)
    assert "9223372036854775807" in line


def test_ids_beyond_64_bits_in_a_real_process(cli: CliFn) -> None:
    line = one_line_error(cli("case", "show", ABOVE_BIGINT), 2)
    assert line.startswith("error: ")


def test_deeply_nested_json_is_refused_everywhere_json_is_read(
    cli: CliFn, invoke: CliFn, tmp_path: Path, submitted: Submit
) -> None:
    # given documents nested far deeper than any of ours: 200,000 levels (over the size bound
    # as well) and 100,000 (under it: only the nesting bound catches it)
    case_id = str(submitted())
    huge, deep = tmp_path / "huge.json", tmp_path / "deep.json"
    huge.write_text(nested(200_000), encoding="utf-8")
    deep.write_text(nested(100_000), encoding="utf-8")
    assert deep.stat().st_size < MAX_DOCUMENT_BYTES

    # when each command that reads JSON is given them
    fire = ("case", "fire", case_id, "approve", "--actor", "merchant:m1")
    results = {
        "submit huge": cli("case", "submit", str(huge)),
        "submit deep": invoke("case", "submit", str(deep)),
        "submit stdin": invoke("case", "submit", "-", input=nested(100_000)),
        "fire --data @": invoke(*fire, "--data", f"@{deep}"),
        "fire --data": invoke(*fire, "--data", nested(50_000)),
        "events ingest": cli("events", "ingest", str(deep)),
        "orders import": invoke("orders", "import", str(deep)),
    }

    # then each is one line and exit 2, and the case did not move
    for what, result in results.items():
        line = one_line_error(result, 2)
        assert "nests deeper than" in line or "over 256 KiB" in line, (what, line)
    assert invoke("case", "show", case_id, "--json").json()["state"] == "submitted"


def test_nesting_at_the_bound_is_read_and_one_more_level_is_not(
    invoke: CliFn, submitted: Submit
) -> None:
    case_id = str(submitted())
    fire = ("case", "fire", case_id, "approve", "--actor", "merchant:m1", "--data")
    at_bound = {"note": json.loads(nested(MAX_JSON_DEPTH - 1))}
    beyond = {"note": json.loads(nested(MAX_JSON_DEPTH))}

    refused = invoke("--json", *fire, json.dumps(beyond))
    assert refused.code == 2 and refused.error()["code"] == "too_deep"
    # one level less is read (the trigger then decides what it accepts)
    assert "nests deeper" not in invoke(*fire, json.dumps(at_bound)).stderr


def test_events_ingest_refuses_a_deep_line_before_applying_any(
    invoke: CliFn, tmp_path: Path, submitted: Submit
) -> None:
    # given a file whose first line is a good event and whose second nests too deeply
    case_id = submitted()
    good = {
        "source": "merchant-portal",
        "event_id": "e-1",
        "type": "merchant.approved",
        "case_id": case_id,
        "occurred_at": "2026-11-20T10:00:00+08:00",
        "data": {"merchant_id": "m1"},
    }
    path = tmp_path / "events.jsonl"
    path.write_text(json.dumps(good) + "\n" + nested(5_000) + "\n", encoding="utf-8")

    # when it is ingested, then it is refused whole, naming the line, and nothing applied
    line = one_line_error(invoke("events", "ingest", str(path)), 2)
    assert "line 2 nests deeper than" in line
    assert invoke("case", "show", str(case_id), "--json").json()["state"] == "submitted"


@pytest.mark.parametrize(
    "text, code",
    [
        ('{"type": "return_refund", "description": "a\\u0000b"}', "invalid_text"),
        ('{"type": "return_refund", "description": "\\ud800"}', "invalid_text"),
        ('{"type": "return_refund", "requested_amount": NaN}', "invalid_number"),
        ('{"type": "return_refund", "requested_amount": -Infinity}', "invalid_number"),
    ],
)
def test_text_and_numbers_no_database_keeps_are_refused(
    invoke: CliFn, text: str, code: str
) -> None:
    result = invoke("--json", "case", "submit", "-", input=text)
    assert result.code == 2
    assert result.error()["code"] == code


def test_submit_reads_at_most_the_document_bound_of_an_endless_file(cli: CliFn) -> None:
    # when the application is /dev/zero (endless): refused after 256 KiB, not read for ever
    result = cli("case", "submit", "/dev/zero")
    line = one_line_error(result, 2)
    assert "over 256 KiB" in line


def test_oversized_stdin_and_data_are_refused(invoke: CliFn) -> None:
    big = json.dumps({"description": "x" * MAX_DOCUMENT_BYTES})
    assert invoke("--json", "case", "submit", "-", input=big).error()["code"] == "too_large"
    fire = ("--json", "case", "fire", "1", "approve", "--actor", "admin", "--reason", "r")
    assert invoke(*fire, "--data", big).error()["code"] == "too_large"


def test_a_directory_is_not_an_application(invoke: CliFn, tmp_path: Path) -> None:
    line = one_line_error(invoke("case", "submit", str(tmp_path)), 2)
    assert "is a directory" in line


@pytest.mark.parametrize(
    "option, value",
    [
        ("--now", "0001-01-01T00:00:00+14:00"),
        ("--now", "9999-12-31T23:59:59-14:00"),
        ("--now", "1969-12-31T23:59:59Z"),
        ("--now", "9001-01-01T00:00:00Z"),
    ],
)
def test_times_outside_the_years_bound_are_refused(invoke: CliFn, option: str, value: str) -> None:
    line = one_line_error(invoke(option, value, "case", "list"), 2)
    assert "outside the years 1970 to 9000" in line


def test_year_one_in_a_real_process(cli: CliFn) -> None:
    one_line_error(cli("--now", "0001-01-01T00:00:00+14:00", "case", "show", "1"), 2)


@pytest.mark.parametrize("hours", ["nan", "inf", "-1", "1e300", "100000"])
def test_extension_hours_are_bounded(invoke: CliFn, submitted: Submit, hours: str) -> None:
    case_id = str(submitted())
    result = invoke(
        "--now", NOW, "case", "extend-deadline", case_id,
        "--actor", "admin", "--reason", "r", "--hours", hours,
    )  # fmt: skip
    one_line_error(result, 2)


def test_extension_hours_past_a_year_are_refused_by_the_option(
    invoke: CliFn, submitted: Submit
) -> None:
    # a year is the most any extension may be (the service's own bound, workflow/payloads.py)
    case_id = str(submitted())
    result = invoke(
        "--now", NOW, "case", "extend-deadline", case_id,
        "--actor", "admin", "--reason", "r", "--hours", "8761",
    )  # fmt: skip
    assert "Invalid value for '--hours'" in one_line_error(result, 2)


def test_until_beyond_the_years_bound_is_refused(invoke: CliFn, submitted: Submit) -> None:
    case_id = str(submitted())
    result = invoke(
        "case", "extend-deadline", case_id, "--actor", "admin", "--reason", "r",
        "--until", "9999-12-31T23:59:59+00:00",
    )  # fmt: skip
    assert "outside the years" in one_line_error(result, 2)


def test_a_deadline_in_year_9999_is_shown_not_crashed_on(
    cli: CliFn, invoke: CliFn, env: dict[str, str], submitted: Submit
) -> None:
    # given a deadline extended to the last minute of year 9999, as the HTTP API accepts
    case_id = submitted()
    # (past the API's longest extension, as a database written before that bound may hold)
    settings = composition.load_settings()
    unbounded = settings.model_copy(update={"max_deadline_extension": timedelta(days=3_000_000)})
    clock = FakeClock(datetime.fromisoformat(NOW))
    service = composition.build_service(unbounded, clock)
    far = datetime(9999, 12, 31, 23, 59, tzinfo=UTC)
    service.extend_deadline(case_id, Actor.parse("admin"), "far", until=far)

    # when the case is shown, listed, its history and the timers read, in a real process
    for args in (
        ("case", "show", str(case_id), "--history"),
        ("case", "list"),
        ("case", "history", str(case_id)),
        ("--now", "2026-11-25T00:00:00Z", "timers", "due"),
    ):
        result = cli(*args)
        # then each prints, the far deadline in UTC (+08:00 would pass year 9999)
        assert result.code == 0, (args, result.stderr)
    shown = cli("case", "show", str(case_id)).stdout
    assert "9999-12-31 23:59 +00:00" in shown
    assert invoke("case", "show", str(case_id), "--json").json()["deadline"]["due_at"] == (
        "9999-12-31T23:59:00Z"
    )


def test_an_ordinary_application_is_well_within_the_bounds(
    invoke: CliFn, import_orders: Callable[..., None]
) -> None:
    # an ordinary application still goes through: the bounds are far from real documents
    import_orders(application())
    result = invoke("--now", NOW, "case", "submit", "-", input=json.dumps(application()))
    assert result.code == 0, result.stderr


@pytest.mark.parametrize(
    "args",
    [
        ("case", "fire", "1", "reject", "--actor", "merchant:m1", "--reason", "bad\udcff"),
        ("orders", "show", "o-\udcff"),
        ("case", "list", "--merchant", "m\udcff"),
        ("case", "fire", "1", "approve", "--actor", "admin", "--idempotency-key", "k\udcff"),
    ],
)
def test_arguments_that_are_not_utf8_are_refused(
    invoke: CliFn, submitted: Submit, args: tuple[str, ...]
) -> None:
    # given bytes that are not UTF-8 on the command line (Python reads them as lone surrogates)
    submitted()
    # when a command gets one, then it is one line and exit 2, naming the argument
    line = one_line_error(invoke(*args), 2)
    assert "is not UTF-8 text" in line


def test_non_utf8_bytes_in_a_real_process(cli: CliFn, submitted: Submit) -> None:
    case_id = str(submitted())
    # the bytes as a shell passes them: subprocess encodes surrogates back to the raw bytes
    line = one_line_error(
        cli("case", "fire", case_id, "reject", "--actor", "merchant:m1", "--reason", "x\udcff"), 2
    )
    assert line == "error: argument 8 (x\\xff) is not UTF-8 text"


@pytest.mark.parametrize(
    "data, message",
    [
        ('{"a": 1e999}', "beyond what a float holds"),
        ('{"a": ' + "9" * 21 + "}", "an integer of 21 digits"),
        ('{"a": -' + "9" * 5000 + "}", "an integer of 5000 digits"),
    ],
)
def test_numbers_beyond_any_column_are_refused(invoke: CliFn, data: str, message: str) -> None:
    result = invoke("--json", "case", "fire", "1", "approve", "--actor", "admin", "--data", data)
    assert result.code == 2
    assert result.error()["code"] == "invalid_number"
    assert message in result.error()["message"]


@pytest.mark.parametrize("args", [("--bogus",), ("--now",), ("--now", "yesterday", "case")])
def test_top_level_usage_errors_are_one_line(invoke: CliFn, args: tuple[str, ...]) -> None:
    line = one_line_error(invoke(*args), 2)
    assert line.startswith("error: ")


def test_the_demo_does_not_delete_a_file_that_is_not_its_database(
    invoke: CliFn, tmp_path: Path
) -> None:
    # given a document where the demo's database would go (a slip of --db)
    notes = tmp_path / "notes.md"
    notes.write_text("# my notes\n", encoding="utf-8")
    # when the demo is pointed at it, then it is refused and the file is untouched
    line = one_line_error(invoke("demo", "--db", str(notes)), 2)
    assert "is not a SQLite database" in line
    assert notes.read_text(encoding="utf-8") == "# my notes\n"
    # and a directory is refused too
    assert "is not a file" in one_line_error(invoke("demo", "--db", str(tmp_path)), 2)


def test_diagram_reads_a_readme_within_the_batch_bound(cli: CliFn) -> None:
    line = one_line_error(cli("diagram", "--check-readme", "/dev/zero"), 2)
    assert "over 32 MiB" in line


def test_reasons_and_keys_are_bounded_as_the_http_api_bounds_them(
    invoke: CliFn, submitted: Submit
) -> None:
    # given a case, and a reason and keys the HTTP API would refuse
    case_id = str(submitted())
    reject = ("--now", NOW, "case", "fire", case_id, "reject", "--actor", "merchant:m1")
    # when they are given on the command line, then each is one line, exit 2
    assert "at most 2000" in one_line_error(invoke(*reject, "--reason", "x" * 2001), 2)
    for key in ("k" * 256, "with space", "tab\tkey"):
        line = one_line_error(invoke(*reject, "--reason", "r", "--idempotency-key", key), 2)
        assert "--idempotency-key" in line
    # and the case did not move; a reason at the bound is taken
    assert invoke("case", "show", case_id, "--json").json()["state"] == "submitted"
    assert invoke(*reject, "--reason", "x" * 2000).code == 0
