"""What a request's authentication costs through ``aftersales serve``: authenticated reads of a
case beside ``/healthz`` (no token, no database) in the same rounds.

``python -m bench.api_requests [--backend sqlite|postgres] [--rounds 5] [--seconds 2]``

Each round measures both kinds for ``--seconds`` each with ``--clients`` keep-alive clients, so
the ratio ``case ÷ healthz`` is taken under the same load; run it on two checkouts (the second
with ``PYTHONPATH`` pointing at it) to compare code, as docs/adr/0013 does.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx

from bench import support
from config.settings import DatabaseSettings, Settings
from entrypoints import composition
from entrypoints.processes import ChildProcess, free_port
from workflow.clock import FakeClock

KINDS = ("healthz", "case")


def _rate(url: str, headers: dict[str, str], clients: int, seconds: float) -> float:
    counts = [0] * clients
    deadline = time.monotonic() + seconds

    def run(index: int) -> None:
        with httpx.Client(headers=headers, timeout=10) as client:
            while time.monotonic() < deadline:
                response = client.get(url)
                assert response.status_code == 200, response.text
                counts[index] += 1

    threads = [threading.Thread(target=run, args=(i,)) for i in range(clients)]
    started = time.monotonic()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return sum(counts) / (time.monotonic() - started)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backend", choices=support.BACKENDS, default="sqlite")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=2.0, help="per kind and round")
    parser.add_argument("--clients", type=int, default=2, help="concurrent keep-alive clients")
    parser.add_argument("--postgres-url")
    options = parser.parse_args(argv)
    console = support.console()
    server_url = support.postgres_url(options.postgres_url)
    support.print_machine(console, support.machine(server_url))
    folder = Path(tempfile.mkdtemp(prefix="aftersales-api-bench-"))
    with support.throwaway_database(options.backend, server_url) as database:
        settings = Settings(database=DatabaseSettings(url=database.url))
        service = composition.build_service(settings, FakeClock(support.T0))
        case_id = support.submit_with_order(service, support.application("o-1")).case.id
        _, secret = composition.build_token_store(settings).create("admin", None, None, support.T0)
        port = free_port()
        env = {
            **os.environ,
            "AFTERSALES_DATABASE_URL": database.url,
            "AFTERSALES_API_RATE_LIMIT_PER_MINUTE": "0",
            "AFTERSALES_API_KICK_RELAY": "false",
        }
        command = [sys.executable, "-m", "entrypoints.cli", "serve", "--port", str(port)]
        command += ["--log-level", "warning"]
        server = ChildProcess(command, folder / "serve.log", env=env, cwd=folder).start()
        try:
            server.wait_port(port, timeout=60)
            base = f"http://127.0.0.1:{port}"
            targets = {
                "healthz": (f"{base}/healthz", {}),
                "case": (f"{base}/cases/{case_id}", {"Authorization": f"Bearer {secret}"}),
            }
            for url, headers in targets.values():  # warm up: connections, caches, imports
                _rate(url, headers, options.clients, 0.5)
            rates: dict[str, list[float]] = {kind: [] for kind in KINDS}
            for _ in range(options.rounds):
                for kind in KINDS:
                    url, headers = targets[kind]
                    rates[kind].append(_rate(url, headers, options.clients, options.seconds))
        finally:
            server.stop()
    ratios = [c / h for c, h in zip(rates["case"], rates["healthz"], strict=True)]
    console.print(
        f"{options.backend}, {options.clients} clients, {options.rounds} rounds × "
        f"{options.seconds:g} s: healthz {support.median(rates['healthz']):,.0f}/s, "
        f"GET /cases/ID {support.median(rates['case']):,.0f}/s; "
        f"case ÷ healthz {support.median(ratios):.1%} "
        f"({min(ratios):.1%}–{max(ratios):.1%})",
        highlight=False,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
