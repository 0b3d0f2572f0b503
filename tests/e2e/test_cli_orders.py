"""``aftersales orders``: import orders of record (JSON lines or an array), show their account."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from .support import CliFn

DOCS = Path(__file__).resolve().parents[2] / "docs"


def order(order_id: str = "o-7", **overrides: Any) -> dict[str, Any]:
    """Two ¥199 shirts and a gift, paid on 2026-11-15, delivered on 2026-11-18."""
    base: dict[str, Any] = {
        "order_id": order_id,
        "buyer_id": "b1",
        "merchant_id": "m1",
        "payment": {
            "channel": "wechat_pay",
            "amount": 39800,
            "paid_at": "2026-11-15T10:00:00+08:00",
        },
        "delivered_at": "2026-11-18T15:00:00+08:00",
        "lines": [{"sku": "shirt", "quantity": 2, "unit_price": 19900, "category": "clothing"}],
        "gifts": [{"sku": "socks", "quantity": 1, "value": 500}],
    }
    return {**base, **overrides}


def lines(*documents: Any) -> str:
    return "".join(json.dumps(document) + "\n" for document in documents)


def test_import_counts_new_updated_and_refused_orders_by_line(invoke: CliFn) -> None:
    # given an order imported before it was delivered
    first = invoke("orders", "import", "-", "--json", input=lines(order(delivered_at=None)))
    assert first.code == 0, first.stderr
    assert first.json() == {"imported": 1, "updated": 0, "refused": []}
    # when a file brings its delivery, a new order, one with an unknown category and a bad line
    text = (
        lines(
            order(),
            order("o-8"),
            order("o-9", lines=[{"sku": "x", "quantity": 1, "unit_price": 1, "category": "rocks"}]),
        )
        + "{not json\n"
    )
    result = invoke("orders", "import", "-", "--json", input=text)
    # then it imports what it can, names each refusal by its line, and exits 2
    assert result.code == 2
    summary = result.json()
    assert (summary["imported"], summary["updated"]) == (1, 1)
    assert [(r["line"], r["order_id"]) for r in summary["refused"]] == [(3, "o-9"), (4, None)]
    assert "rocks" in summary["refused"][0]["reason"]


def test_import_of_an_array_names_refusals_by_index(invoke: CliFn) -> None:
    # given an array whose second order changes nothing and whose third changes a price
    changed = order(
        lines=[{"sku": "shirt", "quantity": 2, "unit_price": 1, "category": "clothing"}]
    )
    text = json.dumps([order(), order(), changed])
    # when it is imported
    result = invoke("orders", "import", "-", "--json", input=text)
    # then the first is imported, the repeat changes nothing and the price change is refused
    assert result.code == 2
    summary = result.json()
    assert (summary["imported"], summary["updated"]) == (1, 0)
    assert [r["index"] for r in summary["refused"]] == [3]


def test_show_gives_the_per_line_account(invoke: CliFn) -> None:
    # given an imported order
    assert invoke("orders", "import", "-", input=lines(order())).code == 0
    # when it is shown as JSON
    result = invoke("orders", "show", "o-7", "--json")
    # then each line has its account and the order what is paid and refundable
    assert result.code == 0, result.stderr
    shown = result.json()
    assert shown["lines"] == [
        {
            "sku": "shirt",
            "category": "clothing",
            "unit_price": 19900,
            "quantity": 2,
            "open_quantity": 0,
            "refunded_quantity": 0,
            "refunded_amount": 0,
        }
    ]
    assert (shown["paid"], shown["refunded"], shown["refundable"]) == (39800, 0, 39800)
    # and the table for people names the order and its line
    table = invoke("orders", "show", "o-7")
    assert table.code == 0, table.stderr
    assert "o-7" in table.stdout and "shirt" in table.stdout


def test_an_order_is_hidden_from_other_buyers_as_if_missing(invoke: CliFn) -> None:
    # given b1's order
    assert invoke("orders", "import", "-", input=lines(order())).code == 0
    # when another buyer, and then anyone, asks for an order that is not theirs or does not exist
    other = invoke("orders", "show", "o-7", "--actor", "buyer:b2", "--json")
    missing = invoke("orders", "show", "o-404", "--json")
    # then both are the same not-found (exit 3)
    assert (other.code, missing.code) == (3, 3)
    assert other.error()["code"] == missing.error()["code"] == "not_found"
    assert invoke("orders", "show", "o-7", "--actor", "buyer:b1").code == 0


def test_import_refuses_input_that_is_too_large_in_one_line(
    invoke: CliFn, monkeypatch: Any
) -> None:
    # given a limit smaller than the input
    from entrypoints.cli import orders as orders_cli

    monkeypatch.setattr(orders_cli, "MAX_IMPORT_BYTES", 100)
    # when a bigger input is imported
    result = invoke("orders", "import", "-", "--json", input=lines(order()))
    # then it is refused as a whole, with one line and exit 2
    assert result.code == 2
    assert result.error()["code"] == "too_large"


def test_the_committed_order_schema_is_current(invoke: CliFn) -> None:
    result = invoke("orders", "schema")
    assert result.code == 0
    assert (DOCS / "order.schema.json").read_text(encoding="utf-8") == result.stdout, (
        "docs/order.schema.json is stale: aftersales orders schema > docs/order.schema.json"
    )


def test_import_refuses_a_file_over_the_limit_unread(
    invoke: CliFn, monkeypatch: Any, tmp_path: Path
) -> None:
    # given a file bigger than the limit
    from entrypoints.cli import orders as orders_cli

    monkeypatch.setattr(orders_cli, "MAX_IMPORT_BYTES", 100)
    path = tmp_path / "orders.jsonl"
    path.write_text(lines(order()), encoding="utf-8")
    # when it is imported
    result = invoke("orders", "import", str(path), "--json")
    # then it is refused as a whole and nothing is imported
    assert result.code == 2
    assert result.error()["code"] == "too_large"
    assert invoke("orders", "show", "o-7").code == 3
