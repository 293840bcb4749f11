"""Row locks of the order flow, one named helper per lock (as Saleor's `order/lock_objects.py`).

Every lock is taken in primary-key order (or with SKIP LOCKED, which never waits), so two code
paths that lock several rows can never deadlock on each other. Each must run in a transaction.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from datetime import datetime

from django.db.models import QuerySet

from orders.errors import OrderNotFound
from orders.models import Order
from orders.selectors import order_due_queryset


def orders_lock(*, order_ids: Iterable[uuid.UUID | str], **owner: str) -> list[Order]:
    """SELECT … FOR UPDATE on orders, in pk order; `owner` (user_id=, tenant_id=) narrows it."""
    return list(
        Order.objects.select_for_update(of=("self",)).filter(pk__in=list(order_ids), **owner).order_by("pk")
    )


def order_lock(*, order_id: uuid.UUID | str, **owner: str) -> Order:
    """Lock one order (404 problem when it does not exist or is not the owner's)."""
    locked = orders_lock(order_ids=[order_id], **owner)
    if not locked:
        raise OrderNotFound(f"Order {order_id} does not exist.")
    return locked[0]


def orders_due_claim(*, now: datetime, limit: int) -> QuerySet[Order]:
    """Claim due pending orders for the expiry sweep: FOR UPDATE SKIP LOCKED, index order.

    Rows held by a payment handler or another sweep are skipped, never waited for. (The
    PostgreSQL sweep does the same claim inside one SQL statement: orders/events.py.)"""
    return (
        order_due_queryset(now=now)
        .order_by("expiration_time")
        .select_for_update(skip_locked=True, of=("self",))[:limit]
    )
