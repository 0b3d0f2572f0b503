"""Operations: ``/healthz`` (the process answers), ``/readyz`` (database and broker reachable),
``/metrics`` (Prometheus; an admin token). The first two need no token, so that probes work."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from config.settings import Settings
from entrypoints.http.auth import Authenticated, Principal, optional_principal, require
from entrypoints.http.context import api_of, json_response
from entrypoints.http.problems import responses
from entrypoints.http.schemas import Health, Readiness
from entrypoints.http.scopes import TokenRole
from persistence.readings import SqlReadings
from tasks.broker import broker_config

router = APIRouter(tags=["operations"])

#: Seconds to wait for a broker's answer.
BROKER_TIMEOUT_S = 2.0


def database_check(readings: SqlReadings, shown_url: str) -> Callable[[], str | None]:
    """``shown_url``: the database URL with its password hidden."""

    def check() -> str | None:
        readings.ping()
        return None

    check.__doc__ = f"database {shown_url}"
    return check


def broker_check(settings: Settings) -> Callable[[], str | None]:
    """Reachability of the broker the workers use: Redis answers PING; the embedded spool's
    folder exists (or can be made) and is writable; any other URL gets a kombu connection."""
    config = broker_config(settings)
    if config.embedded:
        folder = Path(str(config.transport_options["data_folder"]))

        def spool() -> str | None:
            folder.mkdir(parents=True, exist_ok=True)
            if not os.access(folder, os.W_OK):
                return f"the embedded broker's folder {folder} is not writable"
            return None

        return spool
    if config.is_redis:

        def redis_ping() -> str | None:
            import redis

            client = redis.Redis.from_url(
                config.url,
                socket_connect_timeout=BROKER_TIMEOUT_S,
                socket_timeout=BROKER_TIMEOUT_S,
            )
            try:
                client.ping()
            finally:
                client.close()
            return None

        return redis_ping

    def kombu_connect() -> str | None:
        from kombu.connection import Connection

        with Connection(
            config.url, transport_options=config.transport_options, connect_timeout=BROKER_TIMEOUT_S
        ) as connection:
            connection.ensure_connection(max_retries=1, timeout=BROKER_TIMEOUT_S)
        return None

    return kombu_connect


@router.get("/healthz", response_model=Health, summary="Liveness: the process answers")
def healthz() -> Response:
    return json_response(Health, {"status": "ok"})


@router.get(
    "/readyz",
    response_model=Readiness,
    summary="Readiness: the database and the broker are reachable",
    description="`status` for anyone (a probe needs no token); with an admin's token, each "
    "check's outcome and detail too (which database and broker, and why one fails).",
    responses={
        503: {"model": Readiness, "description": "A dependency is unreachable."},
        **responses(401, 429),
    },
)
def readyz(
    request: Request, principal: Annotated[Principal | None, Depends(optional_principal)]
) -> Response:
    api = api_of(request)
    timeout = api.settings.readiness_timeout_seconds
    # Each check in its own thread, bounded: an unreachable host must not hang the probe (the
    # pool is not waited for; a check stuck in a connect ends with its own socket timeout).
    pool = ThreadPoolExecutor(max_workers=max(1, len(api.readiness)))
    futures = {name: pool.submit(check) for name, check in api.readiness.items()}
    deadline = time.monotonic() + timeout
    checks = {}
    for name, future in futures.items():
        try:
            problem = future.result(timeout=max(0.0, deadline - time.monotonic()))
        except FutureTimeout:
            problem = f"no answer within {timeout:g} s"
        except Exception as error:  # any failure of a dependency means "not ready"
            lines = str(error).strip().splitlines()
            problem = f"{type(error).__name__}: {lines[0] if lines else ''}".strip()
        checks[name] = {"ok": problem is None, "detail": problem}
    pool.shutdown(wait=False, cancel_futures=True)
    ready = all(check["ok"] for check in checks.values())
    data: dict[str, Any] = {"status": "ready" if ready else "not_ready"}
    if principal is not None and principal.is_admin:
        # Hosts, ports and error texts help an operator and a reconnaissance alike.
        data["checks"] = checks
    body = Readiness.model_validate(data).model_dump(mode="json", exclude_unset=True)
    return JSONResponse(body, status_code=200 if ready else 503)


@router.get(
    "/metrics",
    summary="Prometheus metrics (admin)",
    response_class=Response,
    responses={
        200: {
            "description": "Prometheus text exposition format.",
            "content": {CONTENT_TYPE_LATEST.split(";")[0]: {"schema": {"type": "string"}}},
        },
        **responses(401, 403, 429, 503),
    },
)
def metrics(request: Request, principal: Authenticated) -> Response:
    require(principal, TokenRole.ADMIN)
    registry = request.app.state.metrics.registry
    return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)
