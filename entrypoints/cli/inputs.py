"""What the command line accepts from outside, and its bounds: files and stdin, JSON documents,
times, row ids and free text. Anything out of bounds is one line and exit 2, never a
traceback, and is refused before the service sees it.

The bounds (docs/cli.md, "Input limits"; those the HTTP API shares are in ``config/limits.py``):

- a document (``case submit``, ``--data``) is at most ``MAX_DOCUMENT_BYTES``, as a request body
  of the HTTP API; a batch file (``orders import``, ``events ingest``) at most
  ``MAX_BATCH_BYTES``. Reading stops one byte past the bound, so ``/dev/zero`` is refused, not
  read for ever;
- JSON nests at most ``MAX_JSON_DEPTH`` levels (the HTTP API's bound), holds no NUL character,
  lone surrogate, ``NaN`` or ``Infinity`` (no database stores them faithfully), no float that
  overflows to infinity and no integer of more than ``MAX_INT_DIGITS`` digits;
- a time lies in the years ``MIN_YEAR`` to ``MAX_YEAR``: wide enough for any real date,
  narrow enough that adding the longest policy period, or showing it in any zone, stays
  inside what ``datetime`` can represent;
- a row id (case, token, dead letter) fits a signed 64-bit integer, as the databases store it;
- a reason is at most ``MAX_TEXT_CHARS`` characters and an idempotency key at most
  ``MAX_KEY_CHARS`` printable ASCII characters, as the HTTP API takes them.
"""

from __future__ import annotations

import json
import math
import re
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any, BinaryIO

import typer

from config.limits import MAX_DOCUMENT_BYTES, MAX_JSON_DEPTH, MAX_KEY_CHARS, MAX_TEXT_CHARS

#: A batch file: an order is about 1 KB, an event half that, so some 30,000 orders.
MAX_BATCH_BYTES = 32 * 1024 * 1024
#: Enough for any id or amount (2^64 has 20 digits); longer ones only cost parsing time.
MAX_INT_DIGITS = 20
MIN_YEAR = 1970
MAX_YEAR = 9000
#: Ids are BIGINT (signed 64 bits) in both databases.
MAX_ROW_ID = 2**63 - 1
_KEY = re.compile(r"^[!-~]+$")


def _bounded_text(value: str | None) -> str | None:
    if value is not None and len(value) > MAX_TEXT_CHARS:
        raise typer.BadParameter(f"{len(value)} characters; at most {MAX_TEXT_CHARS}")
    return value


def _key(value: str | None) -> str | None:
    if value is not None and (len(value) > MAX_KEY_CHARS or not _KEY.match(value)):
        raise typer.BadParameter(
            f"1 to {MAX_KEY_CHARS} printable ASCII characters without spaces, as the HTTP API's"
        )
    return value


CaseId = Annotated[int, typer.Argument(metavar="ID", min=1, max=MAX_ROW_ID, show_default=False)]
AfterId = Annotated[
    int | None,
    typer.Option(metavar="ID", min=0, max=MAX_ROW_ID, help="Page on: rows after this id."),
]
Version = Annotated[
    int | None,
    typer.Option(
        metavar="N",
        min=1,
        max=MAX_ROW_ID,
        help="Refuse (exit 6) unless the case is still at version N.",
    ),
]


def reason_option(help_text: str) -> Any:
    """``--reason``, bounded like the HTTP API's."""
    return typer.Option("--reason", metavar="TEXT", help=help_text, callback=_bounded_text)


def key_option(help_text: str) -> Any:
    """``--idempotency-key``, bounded like the HTTP API's ``Idempotency-Key``."""
    return typer.Option("--idempotency-key", metavar="KEY", help=help_text, callback=_key)


class InputError(Exception):
    """Bad input caught before the service is called: a file, a JSON document, a time."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def read_text(source: str | None, max_bytes: int = MAX_DOCUMENT_BYTES) -> tuple[str, str]:
    """The text of FILE, or of stdin for ``-`` (or no FILE with stdin piped in), refused once
    it passes ``max_bytes``: a device, a FIFO or a growing file is never read without end."""
    if source is None or source == "-":
        if source is None and sys.stdin.isatty():
            raise InputError("usage", "give the application as FILE, or pipe it in on stdin")
        return _decode(_read_bounded(sys.stdin.buffer, "stdin", max_bytes), "stdin"), "stdin"
    try:
        with Path(source).open("rb") as handle:
            data = _read_bounded(handle, source, max_bytes)
    except FileNotFoundError:
        raise InputError("file_not_found", f"no such file: {source}") from None
    except IsADirectoryError:
        raise InputError("unreadable_file", f"cannot read {source}: it is a directory") from None
    except OSError as error:
        raise InputError("unreadable_file", f"cannot read {source}: {error.strerror}") from None
    return _decode(data, source), source


def _read_bounded(handle: BinaryIO, name: str, max_bytes: int) -> bytes:
    data = handle.read(max_bytes + 1)
    if len(data) > max_bytes:
        raise InputError(
            "too_large", f"{name} is over {_size(max_bytes)}, the most read as one input"
        )
    return data


def _size(count: int) -> str:
    if count >= 1024 * 1024:
        return f"{count // (1024 * 1024)} MiB"
    return f"{count // 1024} KiB"


def _decode(data: bytes, name: str) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise InputError("unreadable_file", f"{name} is not UTF-8 text") from None


def parse_json(text: str, name: str) -> Any:
    """A JSON document within the bounds above; ``InputError`` names what is wrong and where:
    ``invalid_json`` (syntax), ``too_deep``, ``invalid_text`` or ``invalid_number``."""
    try:
        document = json.loads(
            text, parse_constant=_refuse_constant, parse_float=_finite, parse_int=_bounded_int
        )
    except json.JSONDecodeError as error:
        raise InputError(
            "invalid_json",
            f"{name} is not valid JSON: {error.msg} at line {error.lineno} column {error.colno}",
        ) from None
    except ValueError as error:  # NaN, Infinity, 1e999, a 5,000-digit integer
        raise InputError("invalid_number", f"{name}: {error}") from None
    except RecursionError:
        raise InputError("too_deep", _too_deep(name)) from None
    check_document(document, name)
    return document


def _refuse_constant(constant: str) -> Any:
    raise ValueError(f"{constant} is not a JSON number")


def _finite(text: str) -> float:
    number = float(text)
    if math.isinf(number):
        raise ValueError(f"{text[:20]} is beyond what a float holds")
    return number


def _bounded_int(text: str) -> int:
    if len(text.lstrip("-")) > MAX_INT_DIGITS:
        raise ValueError(f"an integer of {len(text.lstrip('-'))} digits (at most {MAX_INT_DIGITS})")
    return int(text)


def _too_deep(name: str) -> str:
    return f"{name} nests deeper than {MAX_JSON_DEPTH} levels"


def check_document(document: Any, name: str) -> None:
    """Walks a parsed document without recursion; refuses what the databases cannot keep."""
    stack: list[tuple[Any, int]] = [(document, 1)]
    while stack:
        value, depth = stack.pop()
        if depth > MAX_JSON_DEPTH:
            raise InputError("too_deep", _too_deep(name))
        if isinstance(value, str):
            _check_text(value, name)
        elif isinstance(value, dict):
            for key, item in value.items():
                _check_text(key, name)
                stack.append((item, depth + 1))
        elif isinstance(value, list):
            stack.extend((item, depth + 1) for item in value)


def _check_text(value: str, name: str) -> None:
    if "\x00" in value:
        raise InputError("invalid_text", f"{name} holds a NUL character (\\u0000)")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise InputError("invalid_text", f"{name} holds a lone surrogate (not Unicode)") from None


def parse_data(text: str | None) -> dict[str, Any] | None:
    """``--data``: a JSON object inline, or ``@FILE`` to read it from a file."""
    if text is None:
        return None
    if text.startswith("@"):
        body, name = read_text(text[1:])
    else:
        if len(text.encode("utf-8", "surrogatepass")) > MAX_DOCUMENT_BYTES:
            raise InputError("too_large", f"--data is over {_size(MAX_DOCUMENT_BYTES)}")
        body, name = text, "--data"
    data = parse_json(body, name)
    if not isinstance(data, dict):
        raise InputError("invalid_json", f"{name} must be a JSON object, e.g. '{{\"key\": 1}}'")
    return data


def parse_time(text: str, option: str) -> datetime:
    """An aware ISO 8601 instant in the years ``MIN_YEAR`` to ``MAX_YEAR``, in UTC; a naive one
    is refused since its zone would be a guess."""
    try:
        moment = datetime.fromisoformat(text.strip())
    except ValueError:
        raise InputError(
            "invalid_time",
            f"{option} {text!r} is not an ISO 8601 time, e.g. 2026-11-20T10:00:00+08:00",
        ) from None
    if moment.tzinfo is None or moment.utcoffset() is None:
        raise InputError(
            "invalid_time",
            f"{option} {text} has no timezone; add one, e.g. {text}+08:00 or {text}Z",
        )
    if not MIN_YEAR <= moment.year <= MAX_YEAR:
        raise InputError(
            "invalid_time", f"{option} {text} lies outside the years {MIN_YEAR} to {MAX_YEAR}"
        )
    return moment.astimezone(UTC)
