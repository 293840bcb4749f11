"""Order lifecycle: create, cancel, expire (staff action) and extend.

Every state change is a compare-and-set (`UPDATE … WHERE status = 'pending_payment'`) made while
holding the row lock from orders/locks.py, and writes its outbox event in the same transaction.
The expiry sweep is in orders/expiry.py, payment events in orders/payments.py, event types and
payloads in orders/events.py.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from common import telemetry
from common.errors import ValidationFailed
from orders import events
from orders.errors import OrderNotPending
from orders.expiry import orders_expired_count_on_commit
from orders.locks import order_lock
from orders.models import Order, OrderItem, OrderStatus

MONEY_QUANTUM = Decimal("0.01")
MAX_MONEY = Decimal("9999999999.99")  # Order.total_amount: max_digits=12, decimal_places=2


@dataclass(frozen=True, slots=True)
class OrderItemData:
    sku: str
    name: str
    quantity: int
    unit_price: Decimal


def order_transition(
    *, order: Order, to: str, now: datetime, expected: str = OrderStatus.PENDING_PAYMENT, **fields: Any
) -> bool:
    """Compare-and-set `expected` (pending_payment) → `to`; True when this call made the change.

    The one transition from another state is paid → cancelled: a paid order whose stock the
    placement saga could not confirm is cancelled and refunded (orders/payments.py)."""
    updated = Order.objects.filter(pk=order.pk, status=expected).update(status=to, updated_at=now, **fields)
    if updated:
        order.status = to
        order.updated_at = now
        for name, value in fields.items():
            setattr(order, name, value)
    return bool(updated)


def _placement_closed(*, order: Order, reason: str, now: datetime) -> None:
    """The order's placement saga releases its reservation (same transaction, order locked)."""
    from sagas.placement import placement_order_closed

    placement_order_closed(order_id=order.id, reason=reason, now=now)


# savepoint=False: inside the idempotency decorator's transaction a savepoint costs two round
# trips per order and buys nothing, since any failure here rolls the whole request back anyway.
@telemetry.traced("order.create")
@transaction.atomic(savepoint=False)
def order_create(
    *,
    user_id: str,
    tenant_id: str,
    store_id: uuid.UUID,
    currency: str,
    delivery_address: str,
    contact_phone: str,
    items: Sequence[OrderItemData],
    now: datetime | None = None,
) -> Order:
    """Create a pending order and its `order.created` event in one transaction.

    The total is computed here from the items, never taken from the client.
    """
    if not items:
        raise ValidationFailed("An order needs at least one item.", errors={"items": ["Must not be empty."]})
    now = now or timezone.now()
    total = sum((item.unit_price * item.quantity for item in items), Decimal("0")).quantize(MONEY_QUANTUM)
    if total > MAX_MONEY:
        raise ValidationFailed(
            "The order total is too large.", errors={"items": ["Total exceeds the maximum."]}
        )
    order = Order.objects.create(
        user_id=user_id,
        tenant_id=tenant_id,
        store_id=store_id,
        currency=currency,
        delivery_address=delivery_address,
        contact_phone=contact_phone,
        total_amount=total,
        status=OrderStatus.PENDING_PAYMENT,
        expiration_time=now + timedelta(minutes=settings.ORDER_SESSION_DURATION_MINUTES),
        created_at=now,
    )
    order_items = OrderItem.objects.bulk_create(
        [
            OrderItem(
                order=order,
                sku=item.sku,
                name=item.name,
                quantity=item.quantity,
                unit_price=item.unit_price.quantize(MONEY_QUANTUM),
            )
            for item in items
        ]
    )
    events.order_event_publish(
        order=order,
        type=events.ORDER_CREATED,
        store_id=str(store_id),
        expiration_time=order.expiration_time.isoformat(),
        items=[
            {"sku": i.sku, "name": i.name, "quantity": i.quantity, "unit_price": str(i.unit_price)}
            for i in order_items
        ],
    )
    telemetry.set_attribute("order.id", str(order.id))
    telemetry.set_attribute("order.item_count", len(order_items))
    # The placement saga (reserve stock, await the payment, confirm) starts in this transaction.
    from sagas.placement import placement_start

    placement_start(order=order, items=[{"sku": i.sku, "quantity": i.quantity} for i in order_items], now=now)
    # Serve the items just written without another query.
    order._prefetched_objects_cache = {"items": order_items}  # type: ignore[attr-defined]
    return order


@transaction.atomic
def order_cancel(
    *,
    order_id: uuid.UUID | str,
    user_id: str | None = None,
    tenant_id: str | None = None,
    reason: str = "customer",
    now: datetime | None = None,
) -> Order:
    """Cancel a pending order (409 otherwise). With user_id/tenant_id, only the owner's order."""
    now = now or timezone.now()
    owner = {"user_id": user_id, "tenant_id": tenant_id} if user_id is not None else {}
    order = order_lock(order_id=order_id, **owner)
    current = order.status_at(now)
    if current != OrderStatus.PENDING_PAYMENT or not order_transition(
        order=order, to=OrderStatus.CANCELLED, now=now
    ):
        raise OrderNotPending(f"Order {order.id} is {current}; only a pending order can be cancelled.")
    events.order_event_publish(order=order, type=events.ORDER_CANCELLED, reason=reason)
    _placement_closed(order=order, reason="order_cancelled", now=now)
    return order


@transaction.atomic
def order_expire(*, order_id: uuid.UUID | str, now: datetime | None = None, source: str = "admin") -> Order:
    """Expire one pending order now, due or not (staff action). 409 when it is not pending."""
    now = now or timezone.now()
    order = order_lock(order_id=order_id)
    if not order_transition(order=order, to=OrderStatus.EXPIRED, now=now):
        raise OrderNotPending(f"Order {order.id} is {order.status}; only a pending order can be expired.")
    events.order_event_publish(
        order=order, type=events.ORDER_EXPIRED, expired_at=now.isoformat(), source=source
    )
    orders_expired_count_on_commit(1, source)
    _placement_closed(order=order, reason="order_expired", now=now)
    return order


@transaction.atomic
def order_extend_expiration(
    *, order_id: uuid.UUID | str, minutes: int | None = None, now: datetime | None = None
) -> Order:
    """Give a pending order more time. An overdue order is already expired to its readers: 409."""
    now = now or timezone.now()
    minutes = settings.ORDER_SESSION_DURATION_MINUTES if minutes is None else minutes
    if minutes <= 0:
        raise ValidationFailed("minutes must be positive.", errors={"minutes": ["Must be positive."]})
    order = order_lock(order_id=order_id)
    if order.status_at(now) != OrderStatus.PENDING_PAYMENT:
        raise OrderNotPending(f"Order {order.id} is {order.status_at(now)}; it cannot be extended.")
    new_expiration = order.expiration_time + timedelta(minutes=minutes)
    Order.objects.filter(pk=order.pk, status=OrderStatus.PENDING_PAYMENT).update(
        expiration_time=new_expiration, updated_at=now
    )
    order.expiration_time = new_expiration
    return order
