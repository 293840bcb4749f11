"""Reads of orders, and the one helper that row-locks them."""

from __future__ import annotations

import uuid
from collections.abc import Iterable
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


def orders_lock(*, order_ids: Iterable[uuid.UUID | str], **owner: str) -> list[Order]:
    """Row-lock orders (SELECT … FOR UPDATE) in primary-key order.

    Every code path that locks more than one order, or an order after other rows, goes through
    here: always taking locks in pk order means two lockers can never deadlock on each other.
    `owner` (user_id=…, tenant_id=…) narrows the lock to the caller's own orders. Must run inside
    a transaction.
    """
    return list(
        Order.objects.select_for_update(of=("self",)).filter(pk__in=list(order_ids), **owner).order_by("pk")
    )
