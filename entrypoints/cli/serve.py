"""``aftersales serve``: the HTTP API, built by the composition root and run by uvicorn.

``start_api_process`` is how ``aftersales run`` starts the API beside the worker: a child
process, so the worker's prefork pool never forks a process running a server.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from typing import TYPE_CHECKING, Annotated

import typer

from entrypoints.cli.common import State

if TYPE_CHECKING:
    from datetime import datetime

    from config.settings import Settings

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8000

Host = Annotated[str, typer.Option(help="Interface to listen on (0.0.0.0 for every one).")]
Port = Annotated[int, typer.Option(min=1, max=65535, help="TCP port.")]


def check_port(host: str, port: int) -> None:
    """Refuse, as a setup error, an address the API cannot listen on, before anything starts:
    uvicorn would say so among its log lines, after building the app, and exit 3."""
    from config.errors import SetupError
    from entrypoints.processes import listen_refusal

    refusal = listen_refusal(host, port)
    if refusal is not None:
        raise SetupError(
            f"cannot serve the API on {host}:{port}: {refusal}; stop what listens there, or "
            "choose another port (--port)"
        )


def _watch_parent(parent_pid: int) -> None:
    """Stop this server when the process that started it is gone (``aftersales run`` killed
    with SIGKILL cannot stop its child itself)."""

    def watch() -> None:
        while os.getppid() == parent_pid:
            time.sleep(1)
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=watch, name="parent-watch", daemon=True).start()


def serve_api(
    settings: Settings, host: str, port: int, now: datetime | None = None, log_level: str = "info"
) -> None:
    """Build the app and run it under uvicorn until SIGTERM or Ctrl-C."""
    import uvicorn  # only this command serves; every other one starts without it

    from entrypoints import composition

    app = composition.http_app(settings, composition.shared_clock(settings, now))
    # The app reads X-Forwarded-For itself, from AFTERSALES_API_TRUSTED_PROXIES only: uvicorn's
    # own proxy_headers would believe it from 127.0.0.1 by default (FORWARDED_ALLOW_IPS).
    uvicorn.run(app, host=host, port=port, log_level=log_level.lower(), proxy_headers=False)


def start_api_process(host: str, port: int) -> subprocess.Popen[bytes]:
    """``aftersales serve`` as a child of this process (which it outlives by at most 1 s)."""
    command = [
        sys.executable,
        "-m",
        "entrypoints.cli",
        "serve",
        "--host",
        host,
        "--port",
        str(port),
        "--parent-pid",
        str(os.getpid()),
    ]
    return subprocess.Popen(command)


def stop_api_process(process: subprocess.Popen[bytes], timeout: float = 10.0) -> None:
    if process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def serve(
    ctx: typer.Context,
    host: Host = DEFAULT_HOST,
    port: Port = DEFAULT_PORT,
    log_level: Annotated[str, typer.Option(help="debug, info, warning, error.")] = "info",
    parent_pid: Annotated[int | None, typer.Option(hidden=True)] = None,
) -> None:
    """Serve the HTTP API (OpenAPI at /openapi.json, docs at /docs); blocks."""
    state = ctx.ensure_object(State)
    if parent_pid is not None:
        _watch_parent(parent_pid)
    check_port(host, port)
    serve_api(state.settings(), host, port, state.now, log_level)
