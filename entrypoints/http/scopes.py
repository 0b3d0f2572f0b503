"""What a token may be: ``admin[:NAME]``, ``merchant:ID``, ``buyer:ID`` or ``producer:SOURCE``.

Kept apart from the FastAPI code so that ``aftersales tokens`` can parse scopes without
importing the web stack.
"""

from __future__ import annotations

import re
from enum import StrEnum

from workflow.errors import InvalidInput

#: As ``workflow.payloads.Ident``: the ids and sources the engine and the envelopes accept.
_IDENT = re.compile(r"\A[A-Za-z0-9_.:\-]{1,64}\Z")


class TokenRole(StrEnum):
    #: Platform operators: every case, every endpoint; forced transitions need a reason.
    ADMIN = "admin"
    #: A merchant: its own cases only.
    MERCHANT = "merchant"
    #: A buyer: its own cases only; submits its own applications.
    BUYER = "buyer"
    #: An event producer (carrier, payment gateway, front end): ingests events of its source.
    PRODUCER = "producer"


def parse_scope(text: str) -> tuple[TokenRole, str | None]:
    """``merchant:m1`` -> (MERCHANT, "m1"); the subject is required except for admins."""
    role_text, _, subject = text.strip().partition(":")
    try:
        role = TokenRole(role_text)
    except ValueError:
        roles = "admin, merchant:ID, buyer:ID, producer:SOURCE"
        raise InvalidInput(f"unknown role {role_text!r} (one of {roles})", "role") from None
    subject = subject.strip()
    if not subject:
        if role is TokenRole.ADMIN:
            return role, None
        what = "SOURCE" if role is TokenRole.PRODUCER else "ID"
        raise InvalidInput(f"give the {role.value}'s {what.lower()}: {role.value}:{what}", "role")
    if not _IDENT.match(subject):
        raise InvalidInput(f"{subject!r} is not an id: 1-64 of A-Z a-z 0-9 _ . : -", "role")
    return role, subject
