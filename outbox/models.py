"""Transactional outbox with Debezium-compatible column names.

`sequence` orders events per aggregate: `created_at` can tie and clocks differ between processes.
On PostgreSQL it is filled by the database sequence `outbox_event_sequence_seq` (CACHE 1, so
values grow in the order rows are inserted across every process); on SQLite by a trigger copying
the rowid (see migration 0002).
"""

from __future__ import annotations

import uuid

from django.db import models
from django.utils import timezone


class NextOutboxSequence(models.Func):
    """The column default: `nextval(...)` on PostgreSQL; on SQLite a trigger fills the NULL."""

    output_field = models.BigIntegerField()

    def as_sql(self, compiler, connection, **extra_context):  # type: ignore[no-untyped-def]
        if connection.vendor == "postgresql":
            return "nextval('outbox_event_sequence_seq')", []
        return "NULL", []


class OutboxEvent(models.Model):
    class Status(models.TextChoices):
        PENDING = "pending", "Pending"
        PUBLISHED = "published", "Published"
        DEAD = "dead", "Dead"

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    sequence = models.BigIntegerField(db_default=NextOutboxSequence(), editable=False, null=True)
    aggregatetype = models.CharField(max_length=255)
    aggregateid = models.CharField(max_length=255)
    type = models.CharField(max_length=255)
    payload = models.JSONField()
    headers = models.JSONField(default=dict, blank=True)
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.PENDING)
    attempts = models.PositiveIntegerField(default=0)
    available_at = models.DateTimeField(default=timezone.now)
    locked_until = models.DateTimeField(null=True, blank=True)
    last_error = models.TextField(blank=True)
    created_at = models.DateTimeField(default=timezone.now)
    published_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        db_table = "outbox_event"
        ordering = ["sequence"]
        indexes = [
            # The relay scans pending events in sequence order.
            models.Index(
                fields=["sequence"],
                name="outbox_pending_seq_idx",
                condition=models.Q(status="pending"),
            ),
            # "Is an earlier event of this aggregate still unpublished?" — one probe per candidate.
            models.Index(
                fields=["aggregatetype", "aggregateid", "sequence"],
                name="outbox_unpublished_agg_idx",
                condition=models.Q(status__in=["pending", "dead"]),
            ),
        ]

    def __str__(self) -> str:
        return f"{self.type} {self.aggregatetype}:{self.aggregateid}"


class OutboxDeliveryAttempt(models.Model):
    """One try at delivering an event (as Saleor's EventDeliveryAttempt): when, how long, outcome.

    `OutboxEvent.last_error` keeps the latest error (SPEC §6); these rows keep every one. Deleted
    with their event when the published-events purge removes it."""

    class Status(models.TextChoices):
        SUCCESS = "success", "Success"
        FAILED = "failed", "Failed"

    event = models.ForeignKey(OutboxEvent, on_delete=models.CASCADE, related_name="delivery_attempts")
    attempt_number = models.PositiveIntegerField()
    status = models.CharField(max_length=16, choices=Status.choices)
    error = models.TextField(blank=True)
    duration_ms = models.FloatField(help_text="Time the publisher took for the wave holding this event")
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        db_table = "outbox_delivery_attempt"
        ordering = ["event", "attempt_number", "id"]

    def __str__(self) -> str:
        return f"attempt {self.attempt_number} of {self.event_id}: {self.status}"
