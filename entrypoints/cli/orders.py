"""``aftersales orders``: import orders of record from the order system, and show one's account.

An application names an order; the facts of the case (what was paid, the lines, their prices and
categories, the gifts, the delivery time) are copied from the order imported here. A thin adapter
over ``workflow.orders.OrderService``. The service and rich are imported inside the commands
(see ``main``).
"""

from __future__ import annotations

import json
import sys
from datetime import tzinfo
from typing import TYPE_CHECKING, Annotated, Any

import typer

from entrypoints.cli.common import PROGRESS_THRESHOLD, JsonFlag, new_console, print_json, state_of
from entrypoints.cli.inputs import MAX_BATCH_BYTES, InputError, parse_json, read_text
from entrypoints.terminal import printable
from workflow.model import Actor
from workflow.states import Role

if TYPE_CHECKING:
    from rich.table import Table

    from workflow.orders import OrderAccount

orders_app = typer.Typer(
    no_args_is_help=True,
    help="Orders of record (from the order system): import them, show what is left to refund.",
)

#: Largest input ``orders import`` reads (docs/cli.md, "Input limits"): a bigger export is split
#: into several files.
MAX_IMPORT_BYTES = MAX_BATCH_BYTES
#: Orders per call of the service (one transaction each): the progress bar moves a chunk at a time.
CHUNK = 200
#: Who the command line acts as: an operator at the console, as for every other command.
CLI_ADMIN = Actor(Role.ADMIN, "cli")
#: Exit code when some orders were refused (the others are imported): as invalid input.
EXIT_REFUSED = 2


def read_documents(text: str, name: str) -> list[tuple[int, Any]]:
    """(position, document) per order: one JSON array (positions from 1), or JSON lines (the
    line numbers). A line that is not JSON is kept as ``InputError`` to be refused alone."""
    stripped = text.lstrip()
    if stripped.startswith("["):
        documents = parse_json(text, name)
        if not isinstance(documents, list):  # pragma: no cover - "[" starts an array
            raise InputError("invalid_json", f"{name} must be a JSON array or JSON lines")
        return list(enumerate(documents, 1))
    found: list[tuple[int, Any]] = []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            found.append((number, parse_json(line, f"line {number}")))
        except InputError as error:
            found.append((number, error))
    return found


@orders_app.command("import")
def orders_import(
    ctx: typer.Context,
    source: Annotated[
        str,
        typer.Argument(
            metavar="FILE", help="Orders as JSON lines or one JSON array; - reads stdin."
        ),
    ],
    json_output: JsonFlag = False,
) -> None:
    """Import orders of record, upserting by order_id.

    What was paid and ordered never changes after the first import: a later document for the
    same order may only add its delivery time (or repeat what is known); anything else is
    refused, as is an order with an unknown category. The others are imported all the same;
    the command then exits 2.
    """
    from rich import box
    from rich.console import Console
    from rich.progress import Progress
    from rich.table import Table
    from rich.text import Text

    state = state_of(ctx, json_output)
    text, name = read_text(source, MAX_IMPORT_BYTES)
    documents = read_documents(text, name)
    service = state.orders()
    imported = updated = unchanged = 0
    refused: list[dict[str, Any]] = []
    valid = [(at, doc) for at, doc in documents if not isinstance(doc, InputError)]
    refused.extend(
        {"at": at, "order_id": None, "reason": str(doc)}
        for at, doc in documents
        if isinstance(doc, InputError)
    )
    chunks = [valid[at : at + CHUNK] for at in range(0, len(valid), CHUNK)]

    def load(chunk: list[tuple[int, Any]]) -> None:
        nonlocal imported, updated, unchanged
        result = service.import_orders([doc for _, doc in chunk], CLI_ADMIN)
        imported += result.imported
        updated += result.updated
        unchanged += result.unchanged
        refused.extend(
            {"at": chunk[item.index][0], "order_id": item.order_id, "reason": item.message}
            for item in result.refused
        )

    if state.json or len(valid) <= PROGRESS_THRESHOLD:
        for chunk in chunks:
            load(chunk)
    else:
        with Progress(console=Console(stderr=True), transient=True) as progress:
            task = progress.add_task(f"importing {name}", total=len(valid))
            for chunk in chunks:
                load(chunk)
                progress.advance(task, len(chunk))
    refused.sort(key=lambda item: item["at"])
    where = "line" if not text.lstrip().startswith("[") else "index"
    shown = [
        {where: item["at"], **{k: v for k, v in item.items() if k != "at"}} for item in refused
    ]
    if state.json:
        print_json({"imported": imported, "updated": updated, "refused": shown})
    else:
        console = new_console()
        if shown:
            table = Table(box=box.SIMPLE_HEAD)
            for column in (where, "order", "refused because"):
                table.add_column(column, overflow="fold")
            for item in shown:
                table.add_row(
                    str(item[where]),
                    Text(printable(str(item["order_id"] or "—"))),
                    Text(printable(item["reason"])),
                )
            console.print(table)
        console.print(
            f"{len(documents)} orders from {name}: {imported} imported, {updated} updated, "
            f"{unchanged} unchanged, {len(shown)} refused"
        )
    if shown:
        raise typer.Exit(EXIT_REFUSED)


@orders_app.command("show")
def orders_show(
    ctx: typer.Context,
    order_id: Annotated[str, typer.Argument(metavar="ORDER_ID")],
    actor: Annotated[
        str | None,
        typer.Option("--actor", help="See the order as this actor (a buyer sees only its own)."),
    ] = None,
    json_output: JsonFlag = False,
) -> None:
    """One order of record and its account: per line what is open, refunded, still claimable."""
    from entrypoints import views

    state = state_of(ctx, json_output)
    account = state.orders().account(order_id, Actor.parse(actor) if actor else CLI_ADMIN)
    if state.json:
        print_json(views.order_account_json(account))
        return
    new_console().print(_account_card(account, state.zone()))


def _account_card(account: OrderAccount, zone: tzinfo) -> Table:
    from rich import box
    from rich.table import Table
    from rich.text import Text

    from entrypoints import views

    yuan = views.yuan
    order = account.order
    head = Table.grid(padding=(0, 2))
    head.add_column(style="dim")
    head.add_column()
    head.add_row("order", Text(printable(order.order_id), style="bold"))
    head.add_row("buyer / merchant", Text(printable(f"{order.buyer_id} / {order.merchant_id}")))
    head.add_row(
        "paid",
        f"{yuan(order.payment.amount)} by {printable(order.payment.channel)} at "
        f"{views.local(order.payment.paid_at, zone)}",
    )
    head.add_row(
        "delivered", views.local(order.delivered_at, zone) if order.delivered_at else "not yet"
    )
    head.add_row(
        "refunded / open / refundable",
        f"{yuan(account.refunded)} / {yuan(account.pending)} / {yuan(account.refundable)}",
    )
    lines = Table(box=box.SIMPLE_HEAD)
    for column in ("sku", "category", "unit", "ordered", "open", "refunded", "refunded ¥"):
        lines.add_column(column, justify="left" if column in ("sku", "category") else "right")
    for line in account.lines:
        lines.add_row(
            Text(printable(line.sku)),
            Text(printable(line.category)),
            yuan(line.unit_price),
            str(line.quantity),
            str(line.open_quantity),
            str(line.refunded_quantity),
            yuan(line.refunded_amount),
        )
    card = Table.grid()
    card.add_row(head)
    card.add_row(lines)
    if order.gifts:
        gifts = ", ".join(
            f"{printable(g.sku)} ×{g.quantity} ({yuan(g.value)})" for g in order.gifts
        )
        card.add_row(Text(f"gifts: {gifts}", style="dim"))
    return card


def order_schema() -> dict[str, Any]:
    """The JSON Schema of an order document (docs/order.schema.json)."""
    from workflow.orders import OrderIn

    schema = OrderIn.model_json_schema()
    schema["title"] = "OrderOfRecord"
    schema["description"] = (
        "An order of record as the order system sends it (docs/orders.md): `orders import`, "
        "POST /orders, or the data of an order.placed event. Money in integer fen."
    )
    return {"$schema": "https://json-schema.org/draft/2020-12/schema", **schema}


@orders_app.command("schema")
def orders_schema() -> None:
    """The JSON Schema of an order document (docs/order.schema.json is this output)."""
    sys.stdout.write(json.dumps(order_schema(), indent=2, ensure_ascii=False) + "\n")
