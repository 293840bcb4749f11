"""Payment events: signature check, one strict serializer for both intakes, applied exactly once.

The HTTP intake (`POST /api/payments/events`, orders/apis.py) and the broker consumer
(orders/consumer.py) both call `payment_event_parse` (PaymentEventSerializer) and then
`payment_event_handle`; they are one logical consumer group, so an event delivered both ways is
applied once.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import re
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

from django.conf import settings
from django.db import IntegrityError, transaction
from django.utils import timezone
from rest_framework import serializers

from common import telemetry
from common.errors import ApplicationError, ServiceUnavailable, ValidationFailed
from orders import events, metrics
from orders.errors import PaymentAmountMismatch, PaymentSignatureInvalid
from orders.expiry import orders_expired_count_on_commit
from orders.locks import order_lock
from orders.models import Order, OrderStatus, ProcessedEvent
from orders.services import MONEY_QUANTUM, order_transition
from sagas.placement import placement_order_closed, placement_order_paid

logger = logging.getLogger(__name__)

# HTTP intake and the broker consumer are one logical consumer: an event delivered both ways
# is applied once.
PAYMENT_CONSUMER_GROUP = "orders.payments"
PAYMENT_SUCCESS = "payment.success"
PAYMENT_FAILED = "payment.failed"
AMOUNT_RE = re.compile(r"^[0-9]{1,10}(\.[0-9]{1,2})?$")  # fits Order.total_amount (12, 2)
UUID_RE = re.compile(r"^[0-9a-fA-F]{8}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{12}$")


class PaymentEventParseError(ValidationFailed):
    pass


# --- Values ---------------------------------------------------------------------------------
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


# Terminal status a payment success finds → (outcome, refund-request event type).
_REFUND_REQUESTS = {
    OrderStatus.EXPIRED: (PaymentOutcome.PAYMENT_AFTER_EXPIRY, events.ORDER_PAYMENT_AFTER_EXPIRY),
    OrderStatus.CANCELLED: (
        PaymentOutcome.PAYMENT_AFTER_CANCELLATION,
        events.ORDER_PAYMENT_AFTER_CANCELLATION,
    ),
}


# --- Parsing --------------------------------------------------------------------------------
class StrictStringField(serializers.CharField):
    """A JSON string only (DRF's CharField turns 5 into "5"); kept as sent (no trimming).

    CharField already refuses NUL characters and lone surrogates."""

    def __init__(self, **kwargs: Any) -> None:
        kwargs.setdefault("trim_whitespace", False)
        super().__init__(**kwargs)

    def to_internal_value(self, data: Any) -> str:
        if not isinstance(data, str):
            raise serializers.ValidationError("Must be a JSON string.")
        return super().to_internal_value(data)


class PaymentEventSerializer(serializers.Serializer):
    """The payment event body, strict on types: no JSON number for money, no number for an id."""

    event_id = StrictStringField(max_length=255)
    type = serializers.ChoiceField(choices=[PAYMENT_SUCCESS, PAYMENT_FAILED])
    order_id = StrictStringField(max_length=36, help_text="The order's UUID, as a string.")
    amount = StrictStringField(
        max_length=13, help_text='A decimal string with at most 2 decimal places, e.g. "20.00".'
    )
    currency = serializers.RegexField(r"^[A-Z]{3}\Z", max_length=3, help_text="ISO 4217 code, e.g. USD")
    provider_reference = StrictStringField(max_length=255)

    def validate_order_id(self, value: str) -> uuid.UUID:
        if not UUID_RE.match(value):
            raise serializers.ValidationError("Must be a UUID string.")
        return uuid.UUID(value)

    def validate_amount(self, value: str) -> Decimal:
        if not AMOUNT_RE.match(value):
            raise serializers.ValidationError('Must be a decimal string such as "20.00" (at most 2 places).')
        return Decimal(value).quantize(MONEY_QUANTUM)


def payment_event_parse(*, body: bytes | str) -> PaymentEvent:
    """Validate a payment event body (shared by the HTTP intake and the broker consumer)."""
    try:
        data = json.loads(body)
    except RecursionError:
        raise PaymentEventParseError("The body is nested too deeply.") from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise PaymentEventParseError(f"The body is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise PaymentEventParseError("The body must be a JSON object.")
    serializer = PaymentEventSerializer(data=data)
    if not serializer.is_valid():
        errors = {
            name: [str(message) for message in messages] for name, messages in serializer.errors.items()
        }
        raise PaymentEventParseError("The payment event has invalid fields.", errors=errors)
    return PaymentEvent(**serializer.validated_data)


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


# --- Handling -------------------------------------------------------------------------------
@telemetry.traced("order.payment_event")
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
    telemetry.set_attribute("payment.event_id", str(event.event_id))
    telemetry.set_attribute("payment.channel", channel)
    try:
        result = _payment_event_apply(event=event, consumer_group_name=consumer_group_name, now=now)
    except ApplicationError as exc:
        metrics.PAYMENT_EVENTS.labels(outcome=f"rejected_{exc.slug}", channel=channel).inc()
        raise
    metrics.PAYMENT_EVENTS.labels(
        outcome="duplicate" if result.duplicate else result.outcome, channel=channel
    ).inc()
    telemetry.set_attribute("payment.outcome", "duplicate" if result.duplicate else result.outcome)
    return result


_RECORD_SQL = (
    "INSERT INTO processed_events (event_id, consumer_group_name, processed_at, outcome, order_id) "
    "VALUES (%s, %s, %s, '', %s) ON CONFLICT (consumer_group_name, event_id) DO NOTHING RETURNING id"
)


def _processed_event_record(*, event: PaymentEvent, consumer_group_name: str, now: datetime) -> int | None:
    """Record the event id for the consumer group; None when it was recorded already (a
    concurrent twin waits on the unique key, then finds it). On PostgreSQL one INSERT … ON
    CONFLICT DO NOTHING instead of a savepoint, an INSERT and the savepoint's release."""
    connection = transaction.get_connection()
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute(_RECORD_SQL, [event.event_id, consumer_group_name, now, event.order_id])
            row = cursor.fetchone()
        return row[0] if row else None
    try:
        with transaction.atomic():  # savepoint: a duplicate must not poison the outer transaction
            return ProcessedEvent.objects.create(
                event_id=event.event_id,
                consumer_group_name=consumer_group_name,
                processed_at=now,
                order_id=event.order_id,
            ).pk
    except IntegrityError:
        return None


@transaction.atomic
def _payment_event_apply(
    *, event: PaymentEvent, consumer_group_name: str, now: datetime
) -> PaymentEventResult:
    processed_pk = _processed_event_record(event=event, consumer_group_name=consumer_group_name, now=now)
    if processed_pk is None:
        first = ProcessedEvent.objects.get(event_id=event.event_id, consumer_group_name=consumer_group_name)
        order = Order.objects.filter(pk=first.order_id).first()
        return PaymentEventResult(
            event_id=event.event_id,
            order_id=first.order_id or event.order_id,
            outcome=first.outcome,
            order_status=order.status_at(now) if order else "",
            duplicate=True,
        )

    order = order_lock(order_id=event.order_id)
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
    if overdue and order_transition(order=order, to=OrderStatus.EXPIRED, now=now):
        # The payment handler got the lock before the sweep: expire it here, exactly as the
        # sweep would have (the sweep's compare-and-set then finds nothing to do).
        events.order_event_publish(
            order=order, type=events.ORDER_EXPIRED, expired_at=now.isoformat(), source="payment"
        )
        orders_expired_count_on_commit(1, "payment")
        placement_order_closed(order_id=order.id, reason="order_expired", now=now)

    if event.type == PAYMENT_SUCCESS:
        if order_transition(
            order=order, to=OrderStatus.PAID, now=now, payment_reference=event.provider_reference
        ):
            outcome = PaymentOutcome.PAID
            events.order_event_publish(order=order, type=events.ORDER_PAID, payment=payment)
            placement_order_paid(
                order_id=order.id,
                payment_event_id=event.event_id,
                consumer_group_name=consumer_group_name,
                now=now,
            )
        elif order.status in _REFUND_REQUESTS:
            # Money arrived for an order that is no longer for sale: ask for a refund, under an
            # id derived from the payment event so a redelivery never asks twice.
            outcome, refund_type = _REFUND_REQUESTS[order.status]
            _refund_request(
                order=order,
                type=refund_type,
                consumer_group_name=consumer_group_name,
                payment_event_id=event.event_id,
                payment=payment,
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
        if order_transition(order=order, to=OrderStatus.CANCELLED, now=now):
            outcome = PaymentOutcome.CANCELLED
            events.order_event_publish(
                order=order, type=events.ORDER_CANCELLED, reason="payment_failed", payment=payment
            )
            placement_order_closed(order_id=order.id, reason="payment_failed", now=now)
        else:
            outcome = PaymentOutcome.IGNORED

    ProcessedEvent.objects.filter(pk=processed_pk).update(outcome=outcome)
    return PaymentEventResult(
        event_id=event.event_id,
        order_id=order.id,
        outcome=outcome,
        order_status=order.status,
        duplicate=False,
    )


def _refund_request(
    *,
    order: Order,
    type: str,
    consumer_group_name: str,
    payment_event_id: str,
    payment: dict[str, str],
    **extra: Any,
) -> None:
    """The refund request of one payment: its event id is derived from the payment event, so
    every path that asks for it (a late payment, its redelivery, an unfulfilled paid order) asks
    once."""
    events.order_event_publish(
        order=order,
        type=type,
        event_id=events.refund_request_event_id(
            consumer_group_name=consumer_group_name, payment_event_id=payment_event_id, type=type
        ),
        payment=payment,
        refund=True,
        **extra,
    )


def payment_refund_unfulfilled(
    *,
    order: Order,
    reason: str,
    payment_event_id: str | None = None,
    consumer_group_name: str | None = None,
    now: datetime | None = None,
) -> bool:
    """A paid order that cannot be fulfilled (its stock was never confirmed): paid → cancelled
    (compare-and-set, `order.cancelled` with the reason) and a refund request for its payment.

    The caller holds the order lock, inside its transaction. The request is the one a payment
    for a cancelled order gets (`order.payment_after_cancellation`, refund: true) under the id
    derived from the payment event, so a redelivery of that payment later asks for no second
    refund. Without the payment event id from the caller it is looked up in processed_events
    (and, purged, the order's id names the request). False when the order was not paid."""
    now = now or timezone.now()
    if order.status != OrderStatus.PAID:
        return False
    if payment_event_id is None:
        processed = (
            ProcessedEvent.objects.filter(order_id=order.id, outcome=PaymentOutcome.PAID)
            .order_by("processed_at")
            .values_list("event_id", "consumer_group_name")
            .first()
        )
        if processed is not None:
            payment_event_id, consumer_group_name = processed
    if not order_transition(order=order, to=OrderStatus.CANCELLED, now=now, expected=OrderStatus.PAID):
        return False
    events.order_event_publish(order=order, type=events.ORDER_CANCELLED, reason=reason)
    _refund_request(
        order=order,
        type=events.ORDER_PAYMENT_AFTER_CANCELLATION,
        consumer_group_name=consumer_group_name or PAYMENT_CONSUMER_GROUP,
        payment_event_id=payment_event_id or f"order:{order.id}",
        payment={
            "event_id": payment_event_id or "",
            "provider_reference": order.payment_reference,
            "amount": str(order.total_amount),
            "currency": order.currency,
        },
        reason=reason,
    )
    logger.warning("paid order %s cancelled, its payment to be refunded: %s", order.id, reason)
    return True


def processed_events_purge(
    *,
    now: datetime | None = None,
    retention_days: float | None = None,
    batch_size: int = 5000,
    dry_run: bool = False,
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
    if dry_run:
        return ProcessedEvent.objects.filter(processed_at__lt=cutoff).count()
    deleted = 0
    while True:
        ids = list(
            ProcessedEvent.objects.filter(processed_at__lt=cutoff).values_list("pk", flat=True)[:batch_size]
        )
        if not ids:
            return deleted
        deleted += ProcessedEvent.objects.filter(pk__in=ids).delete()[0]
