"""Orders that expire when unpaid, and the ledger of payment events already applied.

Invariants live in the database: check constraints on amounts, quantities, currency and status,
a unique (consumer_group_name, event_id) for exactly-once payment handling, and a partial index
that makes the expiry sweep's "due pending orders" query an index range scan.
"""

from __future__ import annotations

import os
import time
import uuid
from datetime import datetime

from django.db import models
from django.db.models import Q
from django.utils import timezone


def uuid7() -> uuid.UUID:
    """A time-ordered UUID (RFC 9562 version 7): 48 bits of Unix milliseconds, then 74 random bits.

    Orders are created, expire and are swept in time order; time-ordered keys keep the primary
    key and the outbox's per-aggregate index appended at their right edge instead of scattered.
    """
    value = (time.time_ns() // 1_000_000 & (1 << 48) - 1) << 80 | int.from_bytes(os.urandom(10), "big")
    value = value & ~(0xF << 76) | 0x7 << 76  # version 7
    value = value & ~(0x3 << 62) | 0x2 << 62  # RFC 9562 variant
    return uuid.UUID(int=value)


class OrderStatus(models.TextChoices):
    PENDING_PAYMENT = "pending_payment", "Pending payment"
    PAID = "paid", "Paid"
    CANCELLED = "cancelled", "Cancelled"
    EXPIRED = "expired", "Expired"


class Order(models.Model):
    Status = OrderStatus

    id = models.UUIDField(primary_key=True, default=uuid7, editable=False)
    user_id = models.CharField(max_length=255)
    tenant_id = models.CharField(max_length=255, blank=True)
    store_id = models.UUIDField()
    total_amount = models.DecimalField(max_digits=12, decimal_places=2)
    currency = models.CharField(max_length=3, help_text="ISO 4217 code, e.g. USD")
    delivery_address = models.TextField()
    contact_phone = models.CharField(max_length=16, help_text="E.164, e.g. +14155550100")
    status = models.CharField(max_length=20, choices=OrderStatus.choices, default=OrderStatus.PENDING_PAYMENT)
    # Indexed by the partial index below only: a full index on it would be one more index to
    # maintain on every status change, for no query that needs it.
    expiration_time = models.DateTimeField()
    payment_reference = models.CharField(max_length=255, blank=True)
    created_at = models.DateTimeField(default=timezone.now)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        db_table = "orders_order"
        ordering = ["-created_at", "-id"]
        indexes = [
            # The sweep reads "pending and due" only; a partial index stays small however many
            # paid/expired orders accumulate.
            models.Index(
                fields=["expiration_time"],
                condition=Q(status="pending_payment"),
                name="order_pending_expiry_idx",
            ),
            models.Index(fields=["user_id", "tenant_id", "-created_at"], name="order_owner_created_idx"),
        ]
        constraints = [
            models.CheckConstraint(condition=Q(total_amount__gte=0), name="order_total_amount_gte_0"),
            models.CheckConstraint(
                condition=Q(status__in=[choice for choice, _ in OrderStatus.choices]),
                name="order_status_valid",
            ),
            models.CheckConstraint(condition=Q(currency__regex=r"^[A-Z]{3}$"), name="order_currency_iso4217"),
        ]

    def __str__(self) -> str:
        return f"Order {self.id} ({self.status})"

    def status_at(self, now: datetime) -> str:
        """The status a reader sees: an overdue pending order is expired even before the sweep."""
        if self.status == OrderStatus.PENDING_PAYMENT and self.expiration_time <= now:
            return OrderStatus.EXPIRED
        return self.status


class OrderItem(models.Model):
    order = models.ForeignKey(Order, on_delete=models.CASCADE, related_name="items")
    sku = models.CharField(max_length=64)
    name = models.CharField(max_length=255)
    quantity = models.PositiveIntegerField()
    unit_price = models.DecimalField(max_digits=12, decimal_places=2)

    class Meta:
        db_table = "orders_order_item"
        ordering = ["id"]
        constraints = [
            models.CheckConstraint(condition=Q(quantity__gt=0), name="order_item_quantity_gt_0"),
            models.CheckConstraint(condition=Q(unit_price__gte=0), name="order_item_unit_price_gte_0"),
        ]

    def __str__(self) -> str:
        return f"{self.quantity} × {self.sku}"

    @property
    def line_total(self):  # type: ignore[no-untyped-def]
        return self.quantity * self.unit_price


class ProcessedEvent(models.Model):
    """An inbound event already applied by a consumer group; written in the state change's transaction."""

    event_id = models.CharField(max_length=255)
    consumer_group_name = models.CharField(max_length=100)
    processed_at = models.DateTimeField(default=timezone.now, db_index=True)
    # What applying the event did (paid, cancelled, payment_after_expiry, …): a duplicate answers it.
    outcome = models.CharField(max_length=40, blank=True)
    order_id = models.UUIDField(null=True, blank=True)

    class Meta:
        db_table = "processed_events"
        constraints = [
            models.UniqueConstraint(
                fields=["consumer_group_name", "event_id"], name="processed_event_unique_per_group"
            )
        ]

    def __str__(self) -> str:
        return f"{self.consumer_group_name}:{self.event_id}"
