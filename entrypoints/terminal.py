"""Stored text made safe for a terminal: what people paste into a description or a reason may
hold escape sequences (which clear a screen or retitle a window) or line breaks (which forge
lines of a history). Everything shown to a person passes through ``printable``; JSON for
scripts keeps the data and only escapes what JSON itself would leave raw (``json_safe``).
"""

from __future__ import annotations

import re

#: What may not reach a terminal raw: control characters (C0, DEL, C1: escape sequences, bells,
#: carriage returns, line breaks), line and paragraph separators, and the invisible marks that
#: reorder or hide text (bidirectional overrides and isolates, zero-width characters, BOM).
_MARKS = "\\u061c\\u200b-\\u200f\\u2028-\\u202e\\u2060-\\u2069\\ufeff"
_UNPRINTABLE = re.compile(f"[\\x00-\\x1f\\x7f-\\x9f{_MARKS}]")
#: The subset ``json.dumps`` leaves raw: it escapes C0 controls only.
_RAW_IN_JSON = re.compile(f"[\\x7f-\\x9f{_MARKS}]")
_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def printable(text: str) -> str:
    """``text`` with each character above shown as an escape (``\\n``, ``\\x1b``, ``\\u202e``)."""
    return _UNPRINTABLE.sub(_escape, text)


def _escape(match: re.Match[str]) -> str:
    char = match.group()
    if char in _NAMED:
        return _NAMED[char]
    code = ord(char)
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def json_safe(text: str) -> str:
    """JSON text (from ``json.dumps(..., ensure_ascii=False)``) with the characters above as
    ``\\uXXXX`` escapes: the same data once parsed, since they only occur inside strings."""
    return _RAW_IN_JSON.sub(lambda match: f"\\u{ord(match.group()):04x}", text)
