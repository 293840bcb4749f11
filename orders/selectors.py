"""Reads of orders (row locks are in orders/locks.py)."""

from __future__ import annotations

import uuid
from datetime import datetime

from django.db.models import Prefetch, QuerySet

from orders.models import Order, OrderItem, OrderStatus


def order_list_for_owner(*, user_id: str, tenant_id: str) -> QuerySet[Order]:
    """The caller's own orders, newest first, items prefetched."""
    return (
        Order.objects.filter(user_id=user_id, tenant_id=tenant_id)
        .prefetch_related(Prefetch("items", queryset=OrderItem.objects.order_by("id")))
        .order_by("-created_at", "-id")
    )


def order_get_for_owner(*, order_id: uuid.UUID | str, user_id: str, tenant_id: str) -> Order | None:
    """One of the caller's own orders, or None (another owner's order is indistinguishable from none)."""
    return order_list_for_owner(user_id=user_id, tenant_id=tenant_id).filter(pk=order_id).first()


def order_due_queryset(*, now: datetime) -> QuerySet[Order]:
    """Pending orders whose session is over (served by the partial index order_pending_expiry_idx)."""
    return Order.objects.filter(status=OrderStatus.PENDING_PAYMENT, expiration_time__lte=now)


def order_due_count(*, now: datetime) -> int:
    return order_due_queryset(now=now).count()
