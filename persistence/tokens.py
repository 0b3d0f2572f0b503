"""API tokens and the responses kept for idempotency keys: the HTTP API's own tables.

A token's secret is ``ast_`` and 43 URL-safe characters (256 random bits); only its SHA-256 is
stored, so a leaked database reveals no usable token and the secret is shown exactly once. A
plain hash (no salt, no slow KDF) is enough for secrets of that entropy, and lets a request find
its token with one indexed lookup.
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError

from persistence.tables import api_idempotency, api_tokens

#: Every secret starts with this, so a token found in a log or a repository is recognisable.
TOKEN_PREFIX = "ast_"
#: ``last_used_at`` is written when it is older than this, so a busy token costs one write a
#: minute, not one per request (and "last used" is exact to the minute).
LAST_USE_RESOLUTION = timedelta(minutes=1)


def hash_secret(secret: str) -> str:
    return hashlib.sha256(secret.encode("utf-8")).hexdigest()


def new_secret() -> str:
    return TOKEN_PREFIX + secrets.token_urlsafe(32)


@dataclass(frozen=True)
class ApiToken:
    id: int
    #: ``admin``, ``merchant``, ``buyer`` or ``producer``.
    role: str
    #: The merchant or buyer id, the producer's source, or an admin's name.
    subject: str | None
    name: str | None
    created_at: datetime
    revoked_at: datetime | None = None
    #: None: the token never expires.
    expires_at: datetime | None = None
    #: When a request last authenticated with it (to ``LAST_USE_RESOLUTION``); None: never.
    last_used_at: datetime | None = None

    @property
    def scope(self) -> str:
        """``merchant:m1``, ``producer:sf-express``, ``admin``: as given to ``tokens create``."""
        return f"{self.role}:{self.subject}" if self.subject else self.role

    def expired(self, now: datetime) -> bool:
        return self.expires_at is not None and now >= self.expires_at


def _token(row: Any) -> ApiToken:
    return ApiToken(
        id=int(row.id),
        role=row.role,
        subject=row.subject,
        name=row.name,
        created_at=row.created_at,
        revoked_at=row.revoked_at,
        expires_at=row.expires_at,
        last_used_at=row.last_used_at,
    )


class SqlTokenStore:
    def __init__(self, engine: Engine) -> None:
        self._engine = engine

    def create(
        self,
        role: str,
        subject: str | None,
        name: str | None,
        now: datetime,
        expires_at: datetime | None = None,
    ) -> tuple[ApiToken, str]:
        """A new token and its secret (the only time the secret exists outside the caller)."""
        secret = new_secret()
        values = {
            "token_hash": hash_secret(secret),
            "role": role,
            "subject": subject,
            "name": name,
            "created_at": now,
            "expires_at": expires_at,
        }
        with self._engine.begin() as connection:
            result = connection.execute(
                sa.insert(api_tokens).values(**values).returning(api_tokens.c.id)
            )
            token_id = int(result.scalar_one())
        return ApiToken(token_id, role, subject, name, now, expires_at=expires_at), secret

    def authenticate(self, secret: str) -> ApiToken | None:
        """The unrevoked token whose secret this is, or None (unknown or revoked). Whether it
        has expired is the caller's to check, with its clock (``ApiToken.expired``)."""
        return self.authenticate_hash(hash_secret(secret))

    def authenticate_hash(self, token_hash: str) -> ApiToken | None:
        """As ``authenticate``, from the secret's hash (a console session keeps only that)."""
        statement = sa.select(api_tokens).where(api_tokens.c.token_hash == token_hash)
        with self._engine.connect() as connection:
            row = connection.execute(statement).first()
        if row is None or row.revoked_at is not None:
            return None
        return _token(row)

    def record_use(self, token: ApiToken, now: datetime) -> bool:
        """Note that ``token`` was used at ``now``, unless it was noted less than
        ``LAST_USE_RESOLUTION`` ago (as read with the token: no extra query then). Returns
        whether it wrote. Concurrent requests, here or in other processes, write once: the
        condition is checked again by the UPDATE itself."""
        if token.last_used_at is not None and now - token.last_used_at < LAST_USE_RESOLUTION:
            return False
        stale = sa.or_(
            api_tokens.c.last_used_at.is_(None),
            api_tokens.c.last_used_at <= now - LAST_USE_RESOLUTION,
        )
        with self._engine.begin() as connection:
            result = connection.execute(
                sa.update(api_tokens)
                .where(api_tokens.c.id == token.id, stale)
                .values(last_used_at=now)
            )
        return bool(result.rowcount)

    def get(self, token_id: int) -> ApiToken | None:
        statement = sa.select(api_tokens).where(api_tokens.c.id == token_id)
        with self._engine.connect() as connection:
            row = connection.execute(statement).first()
        return None if row is None else _token(row)

    def list(self, include_revoked: bool = False) -> list[ApiToken]:
        statement = sa.select(api_tokens).order_by(api_tokens.c.id)
        if not include_revoked:
            statement = statement.where(api_tokens.c.revoked_at.is_(None))
        with self._engine.connect() as connection:
            return [_token(row) for row in connection.execute(statement)]

    def revoke(self, token_id: int, now: datetime) -> ApiToken | None:
        """Revoke the token (at once: the next request with it gets 401); idempotent. None when
        there is no such token."""
        with self._engine.begin() as connection:
            connection.execute(
                sa.update(api_tokens)
                .where(api_tokens.c.id == token_id, api_tokens.c.revoked_at.is_(None))
                .values(revoked_at=now)
            )
        return self.get(token_id)


# -- idempotency keys ------------------------------------------------------------------------------


@dataclass(frozen=True)
class StoredResponse:
    status: int
    headers: dict[str, str]
    body: str


@dataclass(frozen=True)
class Claim:
    """What ``claim`` found: ``new`` (run the request), ``replay`` (``response`` is the first
    answer), ``in_progress`` (a twin runs now), ``mismatch`` (the key was used for another
    request to this endpoint) or ``elsewhere`` (for a request to ``used_for``, another
    endpoint)."""

    outcome: str
    response: StoredResponse | None = None
    #: ``METHOD /path`` the key was first used for (``elsewhere``).
    used_for: str | None = None


class SqlIdempotencyStore:
    """First responses per (token, key, method, path), kept for ``retention``."""

    def __init__(
        self,
        engine: Engine,
        retention: timedelta = timedelta(hours=24),
        abandoned_after: timedelta = timedelta(minutes=2),
    ) -> None:
        self._engine = engine
        self.retention = retention
        #: A claim still without a response after this long belongs to a process that died.
        self.abandoned_after = abandoned_after

    def _where(self, token_id: int, key: str, method: str, path: str) -> Any:
        return sa.and_(
            api_idempotency.c.token_id == token_id,
            api_idempotency.c.key == key,
            api_idempotency.c.method == method,
            api_idempotency.c.path == path,
        )

    def claim(
        self, token_id: int, key: str, method: str, path: str, fingerprint: str, now: datetime
    ) -> Claim:
        where = self._where(token_id, key, method, path)
        for _ in range(3):
            try:
                with self._engine.begin() as connection:
                    # A key names one request: used (and not expired) on another endpoint, it
                    # is refused, not run as a new request there.
                    other = connection.execute(
                        sa.select(api_idempotency.c.method, api_idempotency.c.path)
                        .where(
                            api_idempotency.c.token_id == token_id,
                            api_idempotency.c.key == key,
                            sa.not_(where),
                            api_idempotency.c.created_at >= now - self.retention,
                        )
                        .limit(1)
                    ).first()
                    if other is not None:
                        return Claim("elsewhere", used_for=f"{other.method} {other.path}")
                    row = connection.execute(sa.select(api_idempotency).where(where)).first()
                    if row is None:
                        connection.execute(
                            sa.insert(api_idempotency).values(
                                token_id=token_id,
                                key=key,
                                method=method,
                                path=path,
                                fingerprint=fingerprint,
                                created_at=now,
                                headers={},
                            )
                        )
                        return Claim("new")
                    if row.created_at < now - self.retention:
                        # Expired: the key starts afresh.
                        connection.execute(
                            sa.update(api_idempotency)
                            .where(where)
                            .values(
                                fingerprint=fingerprint,
                                created_at=now,
                                status=None,
                                headers={},
                                body=None,
                            )
                        )
                        return Claim("new")
                    if row.fingerprint != fingerprint:
                        return Claim("mismatch")
                    if row.status is not None:
                        stored = StoredResponse(int(row.status), dict(row.headers), row.body or "")
                        return Claim("replay", stored)
                    if row.created_at >= now - self.abandoned_after:
                        return Claim("in_progress")
                    # Abandoned by a process that died mid-request: take it over.
                    taken = connection.execute(
                        sa.update(api_idempotency)
                        .where(where, api_idempotency.c.created_at == row.created_at)
                        .values(created_at=now)
                    )
                    return Claim("new" if taken.rowcount == 1 else "in_progress")
            except IntegrityError:
                # A twin inserted the same key between our read and our insert: look again.
                continue
        return Claim("in_progress")

    def complete(
        self, token_id: int, key: str, method: str, path: str, response: StoredResponse
    ) -> None:
        with self._engine.begin() as connection:
            connection.execute(
                sa.update(api_idempotency)
                .where(self._where(token_id, key, method, path))
                .values(status=response.status, headers=response.headers, body=response.body)
            )

    def release(self, token_id: int, key: str, method: str, path: str) -> None:
        """Forget a claim whose request failed without an answer worth repeating (a 5xx, a
        429): the client's retry runs the request again."""
        with self._engine.begin() as connection:
            connection.execute(
                sa.delete(api_idempotency).where(self._where(token_id, key, method, path))
            )

    def prune(self, now: datetime) -> int:
        """Delete the rows older than the retention; returns how many."""
        with self._engine.begin() as connection:
            result = connection.execute(
                sa.delete(api_idempotency).where(
                    api_idempotency.c.created_at < now - self.retention
                )
            )
            return int(result.rowcount or 0)
