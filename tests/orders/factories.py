"""factory_boy factories for orders and a fast bulk helper for sweep tests."""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta
from decimal import Decimal

import factory
from django.utils import timezone

from orders.models import Order, OrderItem, OrderStatus, ProcessedEvent


class OrderFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Order
        skip_postgeneration_save = True

    user_id = "u1"
    tenant_id = "t1"
    store_id = factory.LazyFunction(uuid.uuid4)
    total_amount = Decimal("20.00")
    currency = "USD"
    delivery_address = "1 Main St, Springfield"
    contact_phone = "+14155550100"
    status = OrderStatus.PENDING_PAYMENT
    expiration_time = factory.LazyFunction(lambda: timezone.now() + timedelta(minutes=15))

    item = factory.RelatedFactory(
        "tests.orders.factories.OrderItemFactory",
        factory_related_name="order",
        quantity=2,
        unit_price="10.00",
    )


class OrderItemFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = OrderItem

    order = factory.SubFactory(OrderFactory, item=None)
    sku = factory.Sequence(lambda n: f"SKU-{n}")
    name = "Widget"
    quantity = 1
    unit_price = Decimal("10.00")


class ProcessedEventFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = ProcessedEvent

    event_id = factory.Sequence(lambda n: f"evt-{n}")
    consumer_group_name = "orders.payments"
    outcome = "paid"


def overdue_orders_bulk(count: int, *, expired_before: datetime | None = None) -> list[uuid.UUID]:
    """`count` pending orders already past their expiration time, inserted in one statement."""
    deadline = expired_before or timezone.now() - timedelta(minutes=1)
    orders = [
        Order(
            user_id="u1",
            tenant_id="t1",
            store_id=uuid.uuid4(),
            total_amount=Decimal("5.00"),
            currency="EUR",
            delivery_address="x",
            contact_phone="+14155550100",
            expiration_time=deadline - timedelta(seconds=index % 600),
        )
        for index in range(count)
    ]
    Order.objects.bulk_create(orders, batch_size=2000)
    return [order.id for order in orders]
