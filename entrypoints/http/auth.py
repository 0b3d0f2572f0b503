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
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from ipaddress import IPv4Network, IPv6Network, ip_address
from typing import Annotated, Protocol

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from entrypoints.http.problems import ProblemError
from entrypoints.http.scopes import TokenRole
from persistence.tokens import ApiToken, SqlTokenStore
from workflow.clock import Clock
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


def client_address(
    peer: str | None, forwarded_for: list[str], trusted: Sequence[IPv4Network | IPv6Network]
) -> str:
    """The address a request came from: the peer, unless the peer is a trusted proxy; then the
    nearest hop of ``X-Forwarded-For`` (read from the right) that is not a trusted proxy.

    Only hops added by trusted proxies are believed: a client may put anything in the header,
    but its own address is what the first trusted proxy appends after it. With no trusted
    proxies (the default) the header is ignored, so rotating it cannot dodge the limit on
    failed authentications."""
    address = peer or "unknown"
    if not trusted or not _is_trusted(address, trusted):
        return address
    hops = [hop.strip() for value in forwarded_for for hop in value.split(",") if hop.strip()]
    for hop in reversed(hops):
        if not _is_trusted(hop, trusted):
            return hop[:64]
        address = hop
    return address


def _is_trusted(address: str, trusted: Sequence[IPv4Network | IPv6Network]) -> bool:
    try:
        ip = ip_address(address)
    except ValueError:
        return False
    return any(ip in network for network in trusted)


def _unauthorized(detail: str) -> ProblemError:
    return ProblemError("unauthorized", detail, headers=_UNAUTHORIZED_HEADERS)


class AuthContext(Protocol):
    """What authentication reads of the app's context (``context.ApiContext``)."""

    tokens: SqlTokenStore
    clock: Clock
    rate_limiter: RateLimiter
    auth_failures: RateLimiter


def authenticate_header(api: AuthContext, authorization: str | None, client: str) -> Principal:
    """The caller of a request with this ``Authorization`` header from ``client``: 401 without
    a live token, 429 over a limit. Notes the token's use (at most once a minute)."""
    scheme, _, secret = (authorization or "").strip().partition(" ")
    secret = secret.strip()
    if scheme.lower() != "bearer" or not secret:
        raise _unauthorized("send Authorization: Bearer <token> (aftersales tokens create)")
    token = api.tokens.authenticate(secret)
    now = api.clock.now()
    if token is None or token.expired(now):
        # Failed attempts are limited per client address: guessing tokens gets slow.
        _limited(api.auth_failures, client, "failed authentications from this address")
        if token is None:
            raise _unauthorized("unknown or revoked token")
        assert token.expires_at is not None
        raise ProblemError(
            "token-expired",
            f"token {token.id} expired at {token.expires_at.isoformat()}; "
            "ask for a new one (aftersales tokens create)",
            headers={
                "WWW-Authenticate": 'Bearer realm="aftersales", error="invalid_token", '
                'error_description="The token expired"'
            },
        )
    _limited(api.rate_limiter, token.id, "requests with this token")
    api.tokens.record_use(token, now)
    return Principal(token)


def authenticate(
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)],
) -> Principal:
    """The dependency of every protected route: 401 without a live token, 429 over the limit.

    The ``Gate`` middleware has usually authenticated the request already, before its body was
    read; then this only hands over its principal."""
    principal = getattr(request.state, "principal", None)
    if isinstance(principal, Principal):
        return principal
    client = request.client.host if request.client else "unknown"
    api: AuthContext = request.app.state.api
    principal = authenticate_header(api, request.headers.get("authorization"), client)
    request.state.principal = principal
    return principal


def optional_principal(request: Request) -> Principal | None:
    """The caller when it sent a token (checked as for protected routes), else None: for
    routes anyone may call that tell admins more."""
    authorization = request.headers.get("authorization")
    if authorization is None:
        return None
    return authenticate(request, None)


Authenticated = Annotated[Principal, Depends(authenticate)]
