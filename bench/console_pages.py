"""Benchmark: the console's pages beside the API calls that read the same data, on 1,000,000
cases in PostgreSQL (issue 16: the overdue queue's first page renders in under 100 ms of
server time), in one run.

Loads the cases as ``bench.console_queue`` does (same loader, same deadlines), signs in to the
console in-process (Starlette's test client: routing, session, query, template; no socket), then
times in interleaved rounds:

- ``GET /console/queue?overdue=true&sort=deadline`` (the page, 50 rows) beside
  ``GET /cases?overdue=true&sort=deadline&limit=50`` (the API's JSON, the baseline);
- ``GET /console/cases/{id}`` (case, order, history, allowed triggers, diagram text) beside
  ``GET /cases/{id}`` plus ``GET /cases/{id}/history`` (what a client of the API reads for the
  same page).

    python -m bench.console_pages                   # 1,000,000 cases, ~3 min to load
    python -m bench.console_pages --cases 100000
"""

from __future__ import annotations

import re
import statistics
from collections.abc import Callable
from typing import Any

from rich.console import Console

from bench.console_queue import PAGE, loaded_and_served, options, rounds

CSRF = re.compile(r'name="csrf_token" value="([^"]+)"')


def main() -> None:
    args = options(__doc__.splitlines()[0] if __doc__ else None).parse_args()
    console = Console()
    with loaded_and_served(console, args.server, args.cases, "console") as opened:
        bar, loaded, client, headers = opened
        # Sign in to the console with the admin's token, as the form does.
        secret = headers["Authorization"].removeprefix("Bearer ")
        form = CSRF.search(client.get("/console/sign-in").text)
        assert form is not None
        signed = client.post(
            "/console/sign-in", data={"csrf_token": form.group(1), "token": secret}
        )
        assert signed.status_code == 200, signed.text
        case_id = args.cases // 2

        def get(path: str, params: dict[str, Any] | None = None, api: bool = False) -> Any:
            def call() -> None:
                response = client.get(path, params=params, headers=headers if api else None)
                assert response.status_code == 200, response.text[:300]

            return call

        def api_case() -> None:
            get(f"/cases/{case_id}", api=True)()
            get(f"/cases/{case_id}/history", api=True)()

        overdue = {"overdue": "true", "sort": "deadline"}
        paths: dict[str, Callable[[], Any]] = {
            "console: overdue queue page": get("/console/queue", overdue),
            "API: overdue queue JSON (baseline)": get("/cases", overdue | {"limit": PAGE}, True),
            "console: case page": get(f"/console/cases/{case_id}"),
            "API: case + history JSON (baseline)": api_case,
        }
        rows = client.get("/console/queue", params=overdue).text.count('id="case-row-')
        assert rows == PAGE, rows
        times = rounds(paths, args.rounds, bar)
    median = {name: statistics.median(values) for name, values in times.items()}
    console.print(f"{loaded.cases:,} cases, {loaded.overdue:,} overdue; medians of {args.rounds}:")
    for name, value in median.items():
        console.print(f"  {name:40} {value:8.2f} ms")
    queue = median["console: overdue queue page"]
    queue_ratio = queue / median["API: overdue queue JSON (baseline)"]
    case_ratio = median["console: case page"] / median["API: case + history JSON (baseline)"]
    console.print(
        f"SUMMARY cases={loaded.cases} console_queue_ms={queue:.2f} "
        f"queue_vs_api={queue_ratio:.2f} case_vs_api={case_ratio:.2f} "
        f"target_queue_under_100ms={'yes' if queue < 100 else 'NO'}"
    )


if __name__ == "__main__":
    main()
