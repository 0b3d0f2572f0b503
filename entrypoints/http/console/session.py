"""Console sign-in sessions and CSRF tokens, as HMAC-signed values (no server-side state).

The session cookie holds the SHA-256 of the bearer token pasted at sign-in (the hash the token
store looks tokens up by, which is no bearer token itself), the expiry and the viewer's time zone,
signed with the console key. Each request looks the token up again, so revoking it ends the
session at once. A CSRF token is an HMAC of the session (or, before sign-in, of a random
pre-session cookie): a page of another site can neither read nor compute it.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta

#: Name of the session cookie (HttpOnly, SameSite=Strict, Path=/console).
SESSION_COOKIE = "aftersales_console"
#: Random value binding the sign-in form's CSRF token before there is a session.
PRESESSION_COOKIE = "aftersales_console_pre"
#: Longest cookie value accepted; ours are under 300 bytes.
MAX_COOKIE = 1024


@dataclass(frozen=True)
class Session:
    """A signed-in viewer: whose token, until when, in which time zone."""

    token_hash: str
    expires_at: datetime
    zone: str


class SessionSigner:
    """Signs and checks sessions and CSRF tokens with one key."""

    def __init__(self, key: bytes | None = None) -> None:
        # Unset: a random key per process (docs/console.md: give every process the same one).
        self._key = key or secrets.token_bytes(32)

    def _mac(self, purpose: str, payload: bytes) -> str:
        digest = hmac.new(self._key, purpose.encode() + b"\0" + payload, hashlib.sha256)
        return base64.urlsafe_b64encode(digest.digest()).decode().rstrip("=")

    def dump(self, session: Session) -> str:
        body = {
            "h": session.token_hash,
            "e": int(session.expires_at.timestamp()),
            "z": session.zone,
        }
        payload = base64.urlsafe_b64encode(json.dumps(body).encode()).decode().rstrip("=")
        return f"{payload}.{self._mac('session', payload.encode())}"

    def load(self, value: str | None, now: datetime) -> Session | None:
        """The session of a cookie value; None when absent, tampered with or expired."""
        if not value or len(value) > MAX_COOKIE or "." not in value:
            return None
        payload, mac = value.rsplit(".", 1)
        if not hmac.compare_digest(mac, self._mac("session", payload.encode())):
            return None
        try:
            body = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
            expires_at = datetime.fromtimestamp(int(body["e"]), now.tzinfo)
            session = Session(str(body["h"]), expires_at, str(body["z"]))
        except (ValueError, KeyError, TypeError, binascii.Error, OverflowError):
            return None
        return session if now < session.expires_at else None

    def csrf_token(self, binding: str) -> str:
        """The token forms carry for ``binding`` (the session cookie or pre-session value)."""
        return self._mac("csrf", binding.encode())

    def csrf_valid(self, binding: str | None, token: str | None) -> bool:
        if not binding or not token:
            return False
        return hmac.compare_digest(token, self.csrf_token(binding))


def new_session(token_hash: str, now: datetime, hours: float, zone: str) -> Session:
    return Session(token_hash, now + timedelta(hours=hours), zone)


def new_presession() -> str:
    return secrets.token_urlsafe(24)
