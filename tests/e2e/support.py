"""Shared pieces of the CLI tests: the sample application, the clock and a run's result."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

#: The simulation clock of these tests: 10:00 in Shanghai, two days after the sample delivery.
NOW = "2026-11-20T10:00:00+08:00"


def application(**overrides: Any) -> dict[str, Any]:
    """A no-reason return of a ¥199 jacket with a ¥5 gift, delivered on 2026-11-18."""
    base: dict[str, Any] = {
        "type": "return_refund",
        "order_id": "o-1",
        "buyer_id": "b1",
        "merchant_id": "m1",
        "category": "clothing",
        "reason": "no_reason",
        "payment": {
            "channel": "wechat_pay",
            "amount": 19900,
            "paid_at": "2026-11-15T10:00:00+08:00",
        },
        "delivered_at": "2026-11-18T15:00:00+08:00",
        "items": [{"sku": "jacket", "quantity": 1, "unit_price": 19900}],
        "gifts": [{"sku": "scarf", "quantity": 1, "value": 500}],
    }
    return {**base, **overrides}


@dataclass(frozen=True)
class Run:
    code: int
    stdout: str
    stderr: str

    def json(self) -> Any:
        return json.loads(self.stdout)

    def error(self) -> dict[str, Any]:
        """The ``--json`` error document printed on stderr."""
        document = json.loads(self.stderr)
        assert isinstance(document, dict)
        error = document["error"]
        assert isinstance(error, dict)
        return error


CliFn = Callable[..., Run]


def one_line_error(result: Run, code: int) -> str:
    """A refusal: the expected exit code and one line on stderr, no traceback; that line."""
    assert result.code == code, (result.stdout, result.stderr)
    assert "Traceback" not in result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    return lines[0]
