"""Bounds on what comes from outside, one set for every entry point: the command line reads its
files and arguments within them (entrypoints/cli/inputs.py), and the HTTP API's request body
defaults to the same size (``ApiSettings.max_body_bytes``) and nesting (docs/cli.md, "Input
limits"; docs/api.md).
"""

from __future__ import annotations

#: One JSON document: an application, a trigger's data or a request body is a few KiB.
MAX_DOCUMENT_BYTES = 256 * 1024
#: No document of ours nests past a handful of levels; deep nesting only exhausts a parser's
#: (or an encoder's) recursion further on.
MAX_JSON_DEPTH = 32
#: Free text a person types (a reason, a description): as the documents' ``Text`` fields.
MAX_TEXT_CHARS = 2000
#: An idempotency key, printable ASCII without spaces.
MAX_KEY_CHARS = 255
