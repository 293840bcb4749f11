"""The expiry sweep: every pending order whose session is over becomes `expired`, in batches."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime

from django.db import transaction
from django.utils import timezone

from common import telemetry
from orders import events, metrics
from orders.errors import ConcurrentSweep
from orders.locks import orders_due_claim
from orders.models import Order, OrderStatus
from outbox.services import outbox_publish_many, outbox_publish_select


def orders_expired_count_on_commit(count: int, source: str) -> None:
    if count:
        transaction.on_commit(lambda: metrics.ORDERS_EXPIRED.labels(source=source).inc(count))


@telemetry.traced("order.expire_due")
def order_expire_due(
    *,
    now: datetime | None = None,
    batch_size: int = 5000,
    max_batches: int | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> int:
    """Expire every pending order whose session is over, batch by batch, until none is due.

    Each batch is its own transaction: claim up to `batch_size` due orders with
    `FOR UPDATE SKIP LOCKED` (rows held by a payment handler or another sweep are skipped, not
    waited for, so overlapping sweeps share the work and never deadlock), set them `expired`
    with a compare-and-set update, and write one `order.expired` event per order. Returns the
    number of orders this call expired. `progress(batch_count, total)` is called per batch.
    """
    now = now or timezone.now()
    total = 0
    batches = 0
    while max_batches is None or batches < max_batches:
        expired = _order_expire_batch(now=now, batch_size=batch_size)
        if not expired:
            break
        total += expired
        batches += 1
        if progress is not None:
            progress(expired, total)
    telemetry.set_attribute("order.expired_count", total)
    telemetry.set_attribute("order.expire_batches", batches)
    return total


# PostgreSQL: claim (SKIP LOCKED), compare-and-set and the order.expired events in ONE statement,
# with no per-row work in Python. Index order (expiration_time) rather than pk order: SKIP LOCKED
# never waits, so no deadlock is possible, and the partial index serves the scan without a sort.
# The events' SELECT is events.EXPIRE_BATCH_EVENTS_SQL, next to the Python payload builder.
_EXPIRE_BATCH_CTES = """
due AS (
    SELECT id FROM orders_order
    WHERE status = 'pending_payment' AND expiration_time <= %(now)s
    ORDER BY expiration_time
    LIMIT %(limit)s
    FOR UPDATE SKIP LOCKED
),
expired AS (
    UPDATE orders_order AS o SET status = 'expired', updated_at = %(now)s
    FROM due
    WHERE o.id = due.id AND o.status = 'pending_payment'
    RETURNING o.id, o.user_id, o.tenant_id, o.total_amount, o.currency
)
"""


@transaction.atomic
def _order_expire_batch(*, now: datetime, batch_size: int) -> int:
    if transaction.get_connection().vendor == "postgresql":
        # One event per expired order: the INSERT's row count is the number of orders expired.
        expired = outbox_publish_select(
            with_sql=_EXPIRE_BATCH_CTES,
            select_sql=events.EXPIRE_BATCH_EVENTS_SQL,
            params={"now": now, "limit": batch_size, "expired_at": now.isoformat()},
        )
    else:
        expired = _order_expire_batch_portable(now=now, batch_size=batch_size)
    if expired:
        # Their placement sagas release the reservations, in this transaction (orders locked).
        from sagas.placement import placement_orders_expired

        placement_orders_expired(now=now)
    orders_expired_count_on_commit(expired, "sweep")
    return expired


def _order_expire_batch_portable(*, now: datetime, batch_size: int) -> int:
    """The same claim, compare-and-set and events through the ORM, for SQLite in development
    (no row locks there: writers are serialised by the database)."""
    claimed = list(
        orders_due_claim(now=now, limit=batch_size).values_list(
            "id", "user_id", "tenant_id", "total_amount", "currency"
        )
    )
    if not claimed:
        return 0
    updated = Order.objects.filter(
        pk__in=[row[0] for row in claimed], status=OrderStatus.PENDING_PAYMENT
    ).update(status=OrderStatus.EXPIRED, updated_at=now)
    if updated != len(claimed):
        # Another sweep won the race for some rows: roll back this batch rather than write
        # events for orders this transaction did not expire.
        raise ConcurrentSweep(f"claimed {len(claimed)} orders but expired {updated}")
    expired_at = now.isoformat()
    return outbox_publish_many(
        events=(
            {
                "aggregatetype": events.AGGREGATE_TYPE,
                "aggregateid": str(order_id),
                "type": events.ORDER_EXPIRED,
                "payload": events.order_payload(
                    order_id=order_id,
                    status=OrderStatus.EXPIRED,
                    total_amount=total_amount,
                    currency=currency,
                    user_id=user_id,
                    tenant_id=tenant_id,
                    expired_at=expired_at,
                    source="sweep",
                ),
            }
            for order_id, user_id, tenant_id, total_amount, currency in claimed
        )
    )
