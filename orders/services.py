"""Order lifecycle: create, cancel, expire, extend, and payment events applied exactly once.

Every state change is a compare-and-set (`UPDATE … WHERE status = 'pending_payment'`) made while
holding the row lock from `orders_lock`, and writes its outbox event in the same transaction.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import re
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal, InvalidOperation
from typing import Any

from django.conf import settings
from django.db import IntegrityError, transaction
from django.utils import timezone

from common.errors import (
    ApplicationError,
    Conflict,
    NotFound,
    ServiceUnavailable,
    Unprocessable,
    ValidationFailed,
)
from orders import metrics
from orders.models import Order, OrderItem, OrderStatus, ProcessedEvent
from orders.selectors import order_due_queryset, orders_lock
from outbox.services import outbox_publish, outbox_publish_many, outbox_publish_select

logger = logging.getLogger(__name__)

AGGREGATE_TYPE = "order"
# HTTP intake and the broker consumer are one logical consumer: an event delivered both ways
# is applied once.
PAYMENT_CONSUMER_GROUP = "orders.payments"
MONEY_QUANTUM = Decimal("0.01")
MAX_MONEY = Decimal("9999999999.99")  # Order.total_amount: max_digits=12, decimal_places=2
CURRENCY_RE = re.compile(r"^[A-Z]{3}$")


class OrderNotFound(NotFound):
    slug, title = "order-not-found", "Order not found"


class OrderNotPending(Conflict):
    slug, title = "order-not-pending", "Order is no longer pending payment"


class PaymentAmountMismatch(Unprocessable):
    slug, title = "payment-amount-mismatch", "Payment does not match the order"


class PaymentSignatureInvalid(ApplicationError):
    status, slug, title = 401, "invalid-signature", "Invalid payment event signature"

    def __init__(self, detail: str | None = None) -> None:
        super().__init__(detail, headers={"WWW-Authenticate": 'Signature realm="payment-events"'})


# --- Values ---------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class OrderItemData:
    sku: str
    name: str
    quantity: int
    unit_price: Decimal


@dataclass(frozen=True, slots=True)
class PaymentEvent:
    event_id: str
    type: str  # payment.success | payment.failed
    order_id: uuid.UUID
    amount: Decimal
    currency: str
    provider_reference: str


@dataclass(frozen=True, slots=True)
class PaymentEventResult:
    event_id: str
    order_id: uuid.UUID
    outcome: str
    order_status: str
    duplicate: bool


class PaymentOutcome:
    PAID = "paid"
    CANCELLED = "cancelled"
    PAYMENT_AFTER_EXPIRY = "payment_after_expiry"
    PAYMENT_AFTER_CANCELLATION = "payment_after_cancellation"
    ALREADY_PAID = "already_paid"
    IGNORED = "ignored"  # a failure for an order that is no longer pending


# --- Events ---------------------------------------------------------------------------------
def _order_payload(
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


def _order_event(*, order: Order, type: str, event_id: uuid.UUID | None = None, **extra: Any) -> None:
    outbox_publish(
        aggregatetype=AGGREGATE_TYPE,
        aggregateid=str(order.id),
        type=type,
        event_id=event_id,
        payload=_order_payload(
            order_id=order.id,
            status=order.status,
            total_amount=order.total_amount,
            currency=order.currency,
            user_id=order.user_id,
            tenant_id=order.tenant_id,
            **extra,
        ),
    )


# Never change: refund requests already sent carry ids derived from it.
REFUND_REQUEST_NAMESPACE = uuid.UUID("5d1f3c0e-8a7b-4c2e-9f61-0b7e4a2d9c13")


# Terminal status a payment success finds → (outcome, refund-request event type).
_REFUND_REQUESTS = {
    OrderStatus.EXPIRED: (PaymentOutcome.PAYMENT_AFTER_EXPIRY, "order.payment_after_expiry"),
    OrderStatus.CANCELLED: (PaymentOutcome.PAYMENT_AFTER_CANCELLATION, "order.payment_after_cancellation"),
}


def refund_request_event_id(*, consumer_group_name: str, payment_event_id: str, type: str) -> uuid.UUID:
    """The outbox event id of the refund request a payment event causes, the same every time.

    processed_events rows are purged after PROCESSED_EVENTS_RETENTION_DAYS; a provider
    redelivering the payment later is then applied again and asks for the refund again. With a
    derived id that second request is the same event to consumers deduping by event id (and is
    not written at all while the first is still in the outbox), so the money is refunded once.
    """
    name = json.dumps([consumer_group_name, payment_event_id, type])  # unambiguous: ids may hold any text
    return uuid.uuid5(REFUND_REQUEST_NAMESPACE, name)


def _order_transition(*, order: Order, to: str, now: datetime, **fields: Any) -> bool:
    """Compare-and-set pending_payment → `to`; True when this call made the change."""
    updated = Order.objects.filter(pk=order.pk, status=OrderStatus.PENDING_PAYMENT).update(
        status=to, updated_at=now, **fields
    )
    if updated:
        order.status = to
        order.updated_at = now
        for name, value in fields.items():
            setattr(order, name, value)
    return bool(updated)


def _lock_one(*, order_id: uuid.UUID | str, **owner: str) -> Order:
    locked = orders_lock(order_ids=[order_id], **owner)
    if not locked:
        raise OrderNotFound(f"Order {order_id} does not exist.")
    return locked[0]


def _on_commit_expired(count: int, source: str) -> None:
    if count:
        transaction.on_commit(lambda: metrics.ORDERS_EXPIRED.labels(source=source).inc(count))


# --- Orders ---------------------------------------------------------------------------------
# savepoint=False: inside the idempotency decorator's transaction a savepoint costs two round
# trips per order and buys nothing, since any failure here rolls the whole request back anyway.
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
    _order_event(
        order=order,
        type="order.created",
        store_id=str(store_id),
        expiration_time=order.expiration_time.isoformat(),
        items=[
            {"sku": i.sku, "name": i.name, "quantity": i.quantity, "unit_price": str(i.unit_price)}
            for i in order_items
        ],
    )
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
    order = _lock_one(order_id=order_id, **owner)
    current = order.status_at(now)
    if current != OrderStatus.PENDING_PAYMENT or not _order_transition(
        order=order, to=OrderStatus.CANCELLED, now=now
    ):
        raise OrderNotPending(f"Order {order.id} is {current}; only a pending order can be cancelled.")
    _order_event(order=order, type="order.cancelled", reason=reason)
    return order


@transaction.atomic
def order_expire(*, order_id: uuid.UUID | str, now: datetime | None = None, source: str = "admin") -> Order:
    """Expire one pending order now, due or not (staff action). 409 when it is not pending."""
    now = now or timezone.now()
    order = _lock_one(order_id=order_id)
    if not _order_transition(order=order, to=OrderStatus.EXPIRED, now=now):
        raise OrderNotPending(f"Order {order.id} is {order.status}; only a pending order can be expired.")
    _order_event(order=order, type="order.expired", expired_at=now.isoformat(), source=source)
    _on_commit_expired(1, source)
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
    order = _lock_one(order_id=order_id)
    if order.status_at(now) != OrderStatus.PENDING_PAYMENT:
        raise OrderNotPending(f"Order {order.id} is {order.status_at(now)}; it cannot be extended.")
    new_expiration = order.expiration_time + timedelta(minutes=minutes)
    Order.objects.filter(pk=order.pk, status=OrderStatus.PENDING_PAYMENT).update(
        expiration_time=new_expiration, updated_at=now
    )
    order.expiration_time = new_expiration
    return order


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
    return total


# PostgreSQL: claim (SKIP LOCKED), compare-and-set and the order.expired events in ONE statement,
# with no per-row work in Python. Index order (expiration_time) rather than pk order: SKIP LOCKED
# never waits, so no deadlock is possible, and the partial index serves the scan without a sort.
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
# The same payload as _order_payload() builds in Python for the other transitions.
_EXPIRE_BATCH_EVENTS = """
SELECT 'order' AS aggregatetype, expired.id::text AS aggregateid, 'order.expired' AS type,
       jsonb_build_object(
           'order_id', expired.id::text, 'status', 'expired',
           'total_amount', expired.total_amount::text, 'currency', expired.currency,
           'user_id', expired.user_id, 'tenant_id', expired.tenant_id,
           'expired_at', %(expired_at)s, 'source', 'sweep'
       ) AS payload
FROM expired
"""


@transaction.atomic
def _order_expire_batch(*, now: datetime, batch_size: int) -> int:
    if transaction.get_connection().vendor == "postgresql":
        # One event per expired order: the INSERT's row count is the number of orders expired.
        expired = outbox_publish_select(
            with_sql=_EXPIRE_BATCH_CTES,
            select_sql=_EXPIRE_BATCH_EVENTS,
            params={"now": now, "limit": batch_size, "expired_at": now.isoformat()},
        )
    else:
        expired = _order_expire_batch_portable(now=now, batch_size=batch_size)
    _on_commit_expired(expired, "sweep")
    return expired


def _order_expire_batch_portable(*, now: datetime, batch_size: int) -> int:
    """The same claim, compare-and-set and events through the ORM, for SQLite in development
    (no row locks there: writers are serialised by the database)."""
    claimed = list(
        order_due_queryset(now=now)
        .order_by("expiration_time")
        .select_for_update(skip_locked=True, of=("self",))
        .values_list("id", "user_id", "tenant_id", "total_amount", "currency")[:batch_size]
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
                "aggregatetype": AGGREGATE_TYPE,
                "aggregateid": str(order_id),
                "type": "order.expired",
                "payload": _order_payload(
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


class ConcurrentSweep(Conflict):
    slug, title = "concurrent-sweep", "Another expiry sweep changed these orders"


# --- Payment events -------------------------------------------------------------------------
def payment_signature_verify(*, body: bytes, signature: str | None) -> None:
    """Check `X-Signature: sha256=<hex HMAC-SHA256(body, PAYMENT_WEBHOOK_SECRET)>` on the raw bytes."""
    secret = settings.PAYMENT_WEBHOOK_SECRET
    if not secret:
        # An empty key would let anyone sign: refuse rather than accept unsigned money.
        raise ServiceUnavailable("Payment event intake is not configured (PAYMENT_WEBHOOK_SECRET).")
    if not signature:
        raise PaymentSignatureInvalid("The X-Signature header is missing.")
    scheme, _, received = signature.strip().partition("=")
    if scheme.lower() != "sha256" or not received:
        raise PaymentSignatureInvalid("X-Signature must be 'sha256=<hex digest>'.")
    expected = hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
    if not hmac.compare_digest(expected.encode(), received.strip().lower().encode()):
        raise PaymentSignatureInvalid("The X-Signature does not match the body.")


def payment_event_parse(*, body: bytes | str) -> PaymentEvent:
    """Validate a payment event body (shared by the HTTP intake and the broker consumer)."""
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ValidationFailed(f"The body is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise ValidationFailed("The body must be a JSON object.")
    errors: dict[str, list[str]] = {}

    def text(name: str, *, max_length: int = 255, required: bool = True) -> str:
        value = data.get(name)
        if value is None or value == "":
            if required:
                errors[name] = ["This field is required."]
            return ""
        if not isinstance(value, str) or len(value) > max_length:
            errors[name] = [f"Must be a string of at most {max_length} characters."]
            return ""
        return value

    event_id = text("event_id")
    event_type = text("type")
    if event_type and event_type not in ("payment.success", "payment.failed"):
        errors["type"] = ["Must be 'payment.success' or 'payment.failed'."]
    order_id: uuid.UUID | None = None
    raw_order_id = text("order_id")
    if raw_order_id:
        try:
            order_id = uuid.UUID(raw_order_id)
        except ValueError:
            errors["order_id"] = ["Must be a UUID."]
    amount = Decimal("0")
    raw_amount = data.get("amount")
    if raw_amount is None or isinstance(raw_amount, bool | float | list | dict):
        errors["amount"] = ['Must be a decimal string such as "20.00".']
    else:
        try:
            amount = Decimal(str(raw_amount))
            if not amount.is_finite() or amount < 0 or amount != amount.quantize(MONEY_QUANTUM):
                raise InvalidOperation
        except InvalidOperation:
            errors["amount"] = ["Must be a non-negative amount with at most 2 decimal places."]
    currency = text("currency", max_length=3)
    if currency and not CURRENCY_RE.match(currency):
        errors["currency"] = ["Must be an ISO 4217 code (3 upper-case letters)."]
    provider_reference = text("provider_reference", required=False)
    if errors:
        raise ValidationFailed("The payment event has invalid fields.", errors=errors)
    assert order_id is not None
    return PaymentEvent(
        event_id=event_id,
        type=event_type,
        order_id=order_id,
        amount=amount.quantize(MONEY_QUANTUM),
        currency=currency,
        provider_reference=provider_reference,
    )


def payment_event_handle(
    *,
    event: PaymentEvent,
    channel: str = "http",
    consumer_group_name: str = PAYMENT_CONSUMER_GROUP,
    now: datetime | None = None,
) -> PaymentEventResult:
    """Apply a payment event exactly once per consumer group (HTTP intake and broker consumer).

    One transaction: record the event id in processed_events (the unique key is the dedupe: a
    concurrent twin waits on it and then sees a duplicate), lock the order, compare-and-set its
    status, write the outbox event(s). A rejected event (unknown order 404, amount or currency
    mismatch 422) rolls back entirely, so its id is not recorded and a corrected redelivery is
    still judged on its merits.
    """
    now = now or timezone.now()
    try:
        result = _payment_event_apply(event=event, consumer_group_name=consumer_group_name, now=now)
    except ApplicationError as exc:
        metrics.PAYMENT_EVENTS.labels(outcome=f"rejected_{exc.slug}", channel=channel).inc()
        raise
    metrics.PAYMENT_EVENTS.labels(
        outcome="duplicate" if result.duplicate else result.outcome, channel=channel
    ).inc()
    return result


@transaction.atomic
def _payment_event_apply(
    *, event: PaymentEvent, consumer_group_name: str, now: datetime
) -> PaymentEventResult:
    try:
        with transaction.atomic():  # savepoint: a duplicate must not poison the outer transaction
            processed = ProcessedEvent.objects.create(
                event_id=event.event_id,
                consumer_group_name=consumer_group_name,
                processed_at=now,
                order_id=event.order_id,
            )
    except IntegrityError:
        first = ProcessedEvent.objects.get(event_id=event.event_id, consumer_group_name=consumer_group_name)
        order = Order.objects.filter(pk=first.order_id).first()
        return PaymentEventResult(
            event_id=event.event_id,
            order_id=first.order_id or event.order_id,
            outcome=first.outcome,
            order_status=order.status_at(now) if order else "",
            duplicate=True,
        )

    order = _lock_one(order_id=event.order_id)
    if event.amount != order.total_amount or event.currency != order.currency:
        raise PaymentAmountMismatch(
            f"The event carries {event.amount} {event.currency}; "
            f"order {order.id} is {order.total_amount} {order.currency}.",
            extra={
                "expected": {"amount": str(order.total_amount), "currency": order.currency},
                "received": {"amount": str(event.amount), "currency": event.currency},
            },
        )
    payment = {
        "event_id": event.event_id,
        "provider_reference": event.provider_reference,
        "amount": str(event.amount),
        "currency": event.currency,
    }
    overdue = order.status == OrderStatus.PENDING_PAYMENT and order.expiration_time <= now
    if overdue and _order_transition(order=order, to=OrderStatus.EXPIRED, now=now):
        # The payment handler got the lock before the sweep: expire it here, exactly as the
        # sweep would have (the sweep's compare-and-set then finds nothing to do).
        _order_event(order=order, type="order.expired", expired_at=now.isoformat(), source="payment")
        _on_commit_expired(1, "payment")

    if event.type == "payment.success":
        if _order_transition(
            order=order, to=OrderStatus.PAID, now=now, payment_reference=event.provider_reference
        ):
            outcome = PaymentOutcome.PAID
            _order_event(order=order, type="order.paid", payment=payment)
        elif order.status in _REFUND_REQUESTS:
            # Money arrived for an order that is no longer for sale: ask for a refund, under an
            # id derived from the payment event so a redelivery never asks twice.
            outcome, refund_type = _REFUND_REQUESTS[order.status]
            _order_event(
                order=order,
                type=refund_type,
                event_id=refund_request_event_id(
                    consumer_group_name=consumer_group_name, payment_event_id=event.event_id, type=refund_type
                ),
                payment=payment,
                refund=True,
            )
        else:
            outcome = PaymentOutcome.ALREADY_PAID
            if event.provider_reference != order.payment_reference:
                logger.warning(
                    "second successful payment %s for paid order %s (first %s)",
                    event.provider_reference,
                    order.id,
                    order.payment_reference,
                )
    else:
        if _order_transition(order=order, to=OrderStatus.CANCELLED, now=now):
            outcome = PaymentOutcome.CANCELLED
            _order_event(order=order, type="order.cancelled", reason="payment_failed", payment=payment)
        else:
            outcome = PaymentOutcome.IGNORED

    ProcessedEvent.objects.filter(pk=processed.pk).update(outcome=outcome)
    return PaymentEventResult(
        event_id=event.event_id,
        order_id=order.id,
        outcome=outcome,
        order_status=order.status,
        duplicate=False,
    )


def processed_events_purge(
    *, now: datetime | None = None, retention_days: int | None = None, batch_size: int = 5000
) -> int:
    """Delete processed-event rows older than the retention window, in batches; returns the count.

    A redelivery older than the window is then applied again. Transitions are compare-and-sets,
    so a second success finds the order already paid (no event) and a second failure finds it
    no longer pending (no event); a success for an expired or cancelled order asks for the
    refund again, but under the same event id as the first time (refund_request_event_id), so
    consumers deduping by event id refund once.
    """
    now = now or timezone.now()
    days = settings.PROCESSED_EVENTS_RETENTION_DAYS if retention_days is None else retention_days
    cutoff = now - timedelta(days=days)
    deleted = 0
    while True:
        ids = list(
            ProcessedEvent.objects.filter(processed_at__lt=cutoff).values_list("pk", flat=True)[:batch_size]
        )
        if not ids:
            return deleted
        deleted += ProcessedEvent.objects.filter(pk__in=ids).delete()[0]
