"""The one error a process raises before it can serve: it cannot start as configured."""

from __future__ import annotations


class SetupError(Exception):
    """The service cannot start as configured (database, schema, policy file); one line."""

    code = "setup"
