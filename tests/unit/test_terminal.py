"""Stored text on a terminal: escaped so it can neither drive the terminal nor forge lines."""

from __future__ import annotations

import json

import pytest

from entrypoints.terminal import json_safe, printable


@pytest.mark.parametrize(
    "raw, shown",
    [
        ("plain text, 中文, ¥199.00 — ok", "plain text, 中文, ¥199.00 — ok"),
        ("a\nb\r\tc", "a\\nb\\r\\tc"),
        ("\x1b[2J\x1b]0;title\x07", "\\x1b[2J\\x1b]0;title\\x07"),
        ("\x00\x7f\x85\x9b", "\\x00\\x7f\\x85\\x9b"),
        ("abc\u202edef\u2066\u200b\u2028\ufeff", "abc\\u202edef\\u2066\\u200b\\u2028\\ufeff"),
    ],
)
def test_printable_escapes_what_a_terminal_would_act_on(raw: str, shown: str) -> None:
    assert printable(raw) == shown


def test_json_safe_keeps_the_data_and_escapes_what_json_leaves_raw() -> None:
    data = {"description": "a\x1b[2J\x9b\u202eb\u2028", "sku": "中文"}
    text = json_safe(json.dumps(data, ensure_ascii=False))
    assert json.loads(text) == data
    assert not any(char in text for char in "\x1b\x9b\u202e\u2028")
    assert "中文" in text
