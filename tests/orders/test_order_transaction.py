"""The order and its order.created event commit together or not at all (real transactions)."""

from __future__ import annotations

import uuid
from decimal import Decimal

import pytest

from orders import events, services
from orders.models import Order, OrderItem
from outbox.models import OutboxEvent

pytestmark = pytest.mark.django_db(transaction=True)

ITEMS = [services.OrderItemData(sku="A", name="A", quantity=1, unit_price=Decimal("3.00"))]


def create() -> Order:
    return services.order_create(
        user_id="u1",
        tenant_id="t1",
        store_id=uuid.uuid4(),
        currency="USD",
        delivery_address="x",
        contact_phone="+14155550100",
        items=ITEMS,
    )


def test_failure_after_the_insert_leaves_neither_order_nor_event(monkeypatch):
    # given: the outbox write fails after the order and its items were inserted
    def broken_outbox(**kwargs):
        assert Order.objects.count() == 1  # the insert really happened in this transaction
        raise RuntimeError("outbox down")

    monkeypatch.setattr(events, "outbox_publish", broken_outbox)

    # when
    with pytest.raises(RuntimeError):
        create()

    # then
    assert Order.objects.count() == 0
    assert OrderItem.objects.count() == 0
    assert OutboxEvent.objects.count() == 0


def test_committed_order_has_exactly_its_event():
    order = create()

    assert OutboxEvent.objects.filter(aggregateid=str(order.id), type="order.created").count() == 1


def test_outbox_refuses_to_write_outside_a_transaction():
    from outbox.services import OutboxOutsideTransaction, outbox_publish_many

    with pytest.raises(OutboxOutsideTransaction):
        outbox_publish_many(
            events=[{"aggregatetype": "order", "aggregateid": "1", "type": "t", "payload": {}}]
        )
