"""Bearer tokens, who they act as, and how often they may call.

A request's token is looked up by the SHA-256 of its secret (``persistence.tokens``) on every
request, so a revoked token stops working at once. Authorization is the engine's: a token acts
as ``buyer:ID``, ``merchant:ID`` or ``admin[:NAME]``, and ``CaseService`` refuses another
owner's case exactly as it does for the CLI. Producers act on no case directly; they send
events of their own source.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from entrypoints.http.problems import ProblemError
from entrypoints.http.scopes import TokenRole
from persistence.tokens import ApiToken
from workflow.model import Actor
from workflow.states import Role

bearer = HTTPBearer(
    auto_error=False,
    scheme_name="bearerToken",
    description="An API token from `aftersales tokens create --role ...`, as "
    "`Authorization: Bearer ast_...`.",
)

_UNAUTHORIZED_HEADERS = {"WWW-Authenticate": 'Bearer realm="aftersales"'}


@dataclass(frozen=True)
class Principal:
    """The caller: its token and the actor the engine sees."""

    token: ApiToken

    @property
    def role(self) -> TokenRole:
        return TokenRole(self.token.role)

    @property
    def subject(self) -> str | None:
        return self.token.subject

    @property
    def is_admin(self) -> bool:
        return self.role is TokenRole.ADMIN

    def actor(self) -> Actor:
        """The engine's actor; producers have none (they act through events)."""
        if self.role is TokenRole.PRODUCER:
            raise ProblemError(
                "forbidden", "a producer token sends events (POST /events); it acts on no case"
            )
        if self.role is TokenRole.ADMIN:
            # An admin token without a name is still told apart in the history by its id.
            return Actor(Role.ADMIN, self.subject or f"token-{self.token.id}")
        return Actor(Role(self.role.value), self.subject)


def require(principal: Principal, *roles: TokenRole) -> None:
    if principal.role not in roles:
        allowed = ", ".join(role.value for role in roles)
        raise ProblemError(
            "forbidden", f"this needs a token of role {allowed}, not {principal.role.value}"
        )


class RateLimiter:
    """Token buckets per key: ``per_minute`` requests a minute, bursts up to ``per_minute``.

    In process memory: each API process limits on its own (several processes behind a balancer
    allow that many times the rate in all).
    """

    def __init__(self, per_minute: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.per_minute = per_minute
        self._clock = clock
        self._buckets: dict[object, tuple[float, float]] = {}
        self._lock = threading.Lock()

    def take(self, key: object) -> float | None:
        """None when allowed; else the seconds until the next request would be."""
        if self.per_minute <= 0:
            return None
        rate = self.per_minute / 60.0
        now = self._clock()
        with self._lock:
            tokens, at = self._buckets.get(key, (float(self.per_minute), now))
            tokens = min(float(self.per_minute), tokens + (now - at) * rate)
            if tokens >= 1:
                self._buckets[key] = (tokens - 1, now)
                return None
            self._buckets[key] = (tokens, now)
            if len(self._buckets) > 100_000:
                # Bounded memory under a flood of distinct keys (clients guessing tokens).
                self._buckets.clear()
            return (1 - tokens) / rate


def _limited(limiter: RateLimiter, key: object, what: str) -> None:
    wait = limiter.take(key)
    if wait is not None:
        seconds = max(1, int(wait + 0.999))
        raise ProblemError(
            "rate-limited",
            f"{what}: at most {limiter.per_minute} a minute; retry in {seconds} s",
            headers={"Retry-After": str(seconds)},
        )


def authenticate(
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)],
) -> Principal:
    """The dependency of every protected route: 401 without a live token, 429 over the limit."""
    api = request.app.state.api
    client = request.client.host if request.client else "unknown"
    if credentials is None or not credentials.credentials.strip():
        raise ProblemError(
            "unauthorized",
            "send Authorization: Bearer <token> (aftersales tokens create)",
            headers=_UNAUTHORIZED_HEADERS,
        )
    token = api.tokens.authenticate(credentials.credentials.strip())
    if token is None:
        # Failed attempts are limited per client address: guessing tokens gets slow.
        _limited(api.auth_failures, client, "failed authentications from this address")
        raise ProblemError(
            "unauthorized", "unknown or revoked token", headers=_UNAUTHORIZED_HEADERS
        )
    _limited(api.rate_limiter, token.id, "requests with this token")
    principal = Principal(token)
    request.state.principal = principal
    return principal


Authenticated = Annotated[Principal, Depends(authenticate)]
