"""Migration 0007 builds orders of record for the cases that were there before it."""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta

import sqlalchemy as sa
from alembic import command

from persistence.db import make_engine
from persistence.migrate import alembic_config
from persistence.unit_of_work import SqlUnitOfWorkFactory
from workflow.model import Case, Gift, Item, Payment
from workflow.orders import OrderGift, OrderLine
from workflow.states import CaseState

from .conftest import T0


def _migrate(url: str, revision: str, down: bool = False) -> None:
    engine = make_engine(url)
    config = alembic_config()
    with engine.begin() as connection:
        config.attributes["connection"] = connection
        (command.downgrade if down else command.upgrade)(config, revision)


def test_0007_builds_orders_of_record_from_the_cases_snapshots(
    empty_database_url: str, new_case: Callable[..., Case]
) -> None:
    # given: a database at 0006 with three cases of o-1 (the first one delivered later than
    # stated by none, the second states another quantity and a gift) and one of o-2
    url = empty_database_url
    _migrate(url, "0006")
    first = new_case(skus=("sku-1",), delivered_at=None, category="clothing")
    second = new_case(
        items=[Item("sku-1", 2, 12_900), Item("sku-2", 1, 500)],
        gifts=[Gift("g-1", 1, 300)],
        payment=Payment("wechat_pay", 99_999, T0),
        state=CaseState.CANCELLED,
    )
    other = new_case(order_id="o-2", buyer_id="b-2")
    uow_factory = SqlUnitOfWorkFactory(make_engine(url))
    with uow_factory() as uow:
        for case in (first, second, other):
            uow.cases.add(case)
        uow.commit()

    # when: migrated to 0007
    _migrate(url, "0007")

    # then: one migrated order per order id, its header from the order's first case
    with uow_factory() as uow:
        o1, o2 = uow.orders.get("o-1"), uow.orders.get("o-2")
    assert o1 is not None and o2 is not None and o1.migrated and o2.migrated
    assert (o1.buyer_id, o1.merchant_id, o1.payment) == ("b-1", "m-1", first.payment)
    assert o1.delivered_at == second.delivered_at == T0 - timedelta(days=2)
    assert o1.lines == (
        OrderLine("sku-1", 2, 12_900, "clothing"),
        OrderLine("sku-2", 1, 500, "apparel"),
    )
    assert o1.gifts == (OrderGift("g-1", 1, 300),)
    assert o2.buyer_id == "b-2"
    with make_engine(url).connect() as connection:
        assert "open_case_items" not in sa.inspect(connection).get_table_names()

    # and back down: the open cases' claims are rebuilt, the orders dropped
    _migrate(url, "0006", down=True)
    with make_engine(url).connect() as connection:
        claims = connection.execute(sa.text("SELECT order_id, sku FROM open_case_items")).all()
        assert sorted(claims) == [("o-1", "sku-1"), ("o-2", "sku-1")]
        assert "orders" not in sa.inspect(connection).get_table_names()
