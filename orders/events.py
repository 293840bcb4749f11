"""The order flow's outbox events: type names, and the payload, built in Python and in SQL.

`order_payload()` (Python, every transition but the PostgreSQL sweep) and
`EXPIRE_BATCH_EVENTS_SQL` (the sweep's one-statement INSERT … SELECT) must build the same
object: they sit next to each other so a field added to one is added to the other.
"""

from __future__ import annotations

import json
import uuid
from decimal import Decimal
from typing import Any

from orders.models import Order
from outbox.services import outbox_publish

AGGREGATE_TYPE = "order"

ORDER_CREATED = "order.created"
ORDER_PAID = "order.paid"
ORDER_CANCELLED = "order.cancelled"
ORDER_EXPIRED = "order.expired"
ORDER_PAYMENT_AFTER_EXPIRY = "order.payment_after_expiry"
ORDER_PAYMENT_AFTER_CANCELLATION = "order.payment_after_cancellation"

# Never change: refund requests already sent carry ids derived from it.
REFUND_REQUEST_NAMESPACE = uuid.UUID("5d1f3c0e-8a7b-4c2e-9f61-0b7e4a2d9c13")


def order_payload(
    *,
    order_id: Any,
    status: str,
    total_amount: Decimal,
    currency: str,
    user_id: str,
    tenant_id: str,
    **extra: Any,
) -> dict[str, Any]:
    return {
        "order_id": str(order_id),
        "status": status,
        "total_amount": str(total_amount),
        "currency": currency,
        "user_id": user_id,
        "tenant_id": tenant_id,
        **extra,
    }


# The same object as order_payload(..., expired_at=, source="sweep"), built by PostgreSQL from
# the rows the sweep's UPDATE … RETURNING gave back (CTE `expired`, orders/expiry.py).
EXPIRE_BATCH_EVENTS_SQL = """
SELECT 'order' AS aggregatetype, expired.id::text AS aggregateid, 'order.expired' AS type,
       jsonb_build_object(
           'order_id', expired.id::text, 'status', 'expired',
           'total_amount', expired.total_amount::text, 'currency', expired.currency,
           'user_id', expired.user_id, 'tenant_id', expired.tenant_id,
           'expired_at', %(expired_at)s, 'source', 'sweep'
       ) AS payload
FROM expired
"""
assert f"'{AGGREGATE_TYPE}' AS aggregatetype" in EXPIRE_BATCH_EVENTS_SQL
assert f"'{ORDER_EXPIRED}' AS type" in EXPIRE_BATCH_EVENTS_SQL


def order_event_publish(*, order: Order, type: str, event_id: uuid.UUID | None = None, **extra: Any) -> None:
    """Write one event about `order` into the outbox (inside the caller's transaction)."""
    outbox_publish(
        aggregatetype=AGGREGATE_TYPE,
        aggregateid=str(order.id),
        type=type,
        event_id=event_id,
        payload=order_payload(
            order_id=order.id,
            status=order.status,
            total_amount=order.total_amount,
            currency=order.currency,
            user_id=order.user_id,
            tenant_id=order.tenant_id,
            **extra,
        ),
    )


def refund_request_event_id(*, consumer_group_name: str, payment_event_id: str, type: str) -> uuid.UUID:
    """The outbox event id of the refund request a payment event causes, the same every time.

    processed_events rows are purged after PROCESSED_EVENTS_RETENTION_DAYS; a provider
    redelivering the payment later is then applied again and asks for the refund again. With a
    derived id that second request is the same event to consumers deduping by event id (and is
    not written at all while the first is still in the outbox), so the money is refunded once.
    """
    name = json.dumps([consumer_group_name, payment_event_id, type])  # unambiguous: ids may hold any text
    return uuid.uuid5(REFUND_REQUEST_NAMESPACE, name)
