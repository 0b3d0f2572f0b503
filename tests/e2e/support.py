"""Shared pieces of the CLI tests: the sample application, the clock and a run's result."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

#: The simulation clock of these tests: 10:00 in Shanghai, two days after the sample delivery.
NOW = "2026-11-20T10:00:00+08:00"


def application(**overrides: Any) -> dict[str, Any]:
    """A no-reason return of a ¥199 jacket with a ¥5 gift, delivered on 2026-11-18. It states
    the facts of its order too (``order_for``), which the service accepts when they agree."""
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


def order_for(app: dict[str, Any]) -> dict[str, Any]:
    """The order of record an application (``application``) describes: imported before the
    application is submitted, since a case's facts come from its order."""
    return {
        "order_id": app["order_id"],
        "buyer_id": app["buyer_id"],
        "merchant_id": app["merchant_id"],
        "payment": app["payment"],
        "delivered_at": app["delivered_at"],
        "lines": [
            {
                "sku": item["sku"],
                "quantity": item["quantity"],
                "unit_price": item["unit_price"],
                "category": app["category"],
            }
            for item in app["items"]
        ],
        "gifts": app["gifts"],
    }


def import_order(run: CliFn, app: dict[str, Any]) -> None:
    """Import the order of ``app`` with ``aftersales orders import``, as the order system does."""
    result = run("orders", "import", "-", input=json.dumps(order_for(app)))
    assert result.code == 0, result.stderr


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
