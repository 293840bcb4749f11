"""Saga instances and their steps; the state machine's invariants are check constraints.

A step row is claimed under a lease (`lease_expires_at`) with a compare-and-set UPDATE; the
attempt number it was claimed with is the fencing token its result must present.
"""

from __future__ import annotations

import uuid

from django.db import models
from django.db.models import Q
from django.utils import timezone


class SagaStatus(models.TextChoices):
    RUNNING = "running", "Running"
    COMPLETED = "completed", "Completed"
    COMPENSATING = "compensating", "Compensating"
    COMPENSATED = "compensated", "Compensated"
    FAILED = "failed", "Failed"


class StepKind(models.TextChoices):
    ACTION = "action", "Action"
    COMPENSATION = "compensation", "Compensation"


class StepStatus(models.TextChoices):
    PENDING = "pending", "Pending"
    RUNNING = "running", "Running"
    SUCCEEDED = "succeeded", "Succeeded"
    FAILED = "failed", "Failed"
    SKIPPED = "skipped", "Skipped"


FINISHED_SAGA = [SagaStatus.COMPLETED, SagaStatus.COMPENSATED, SagaStatus.FAILED]
FINISHED_STEP = [StepStatus.SUCCEEDED, StepStatus.FAILED, StepStatus.SKIPPED]


class SagaInstance(models.Model):
    Status = SagaStatus

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    saga_type = models.CharField(max_length=100)
    status = models.CharField(max_length=16, choices=SagaStatus.choices, default=SagaStatus.RUNNING)
    context = models.JSONField(default=dict, blank=True)
    # What the saga is about (the order id for order.placement): the order admin links it.
    reference = models.CharField(max_length=255, blank=True, db_index=True)
    correlation_id = models.CharField(max_length=255, blank=True)
    # W3C trace context of the work that started the saga: each step's span continues it.
    traceparent = models.CharField(max_length=55, blank=True, default="")
    current_step = models.CharField(max_length=100, blank=True)
    # When the step it waits on is overdue (a wait step's deadline): the sweep acts on it.
    deadline = models.DateTimeField(null=True, blank=True)
    # Why it compensates or failed (inventory_rejected, payment_failed, order_expired, …).
    reason = models.CharField(max_length=100, blank=True)
    created_at = models.DateTimeField(default=timezone.now)
    updated_at = models.DateTimeField(default=timezone.now)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        db_table = "sagas_instance"
        ordering = ["-created_at"]
        indexes = [
            models.Index(
                fields=["deadline"],
                condition=Q(status__in=["running", "compensating"]),
                name="saga_open_deadline_idx",
            ),
            models.Index(fields=["saga_type", "status", "-created_at"], name="saga_type_status_idx"),
        ]
        constraints = [
            models.CheckConstraint(
                condition=Q(status__in=[choice for choice, _ in SagaStatus.choices]), name="saga_status_valid"
            ),
            # A finished saga has its finish time, an open one has none.
            models.CheckConstraint(
                condition=Q(status__in=FINISHED_SAGA, finished_at__isnull=False)
                | (~Q(status__in=FINISHED_SAGA) & Q(finished_at__isnull=True)),
                name="saga_finished_at_iff_finished",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.saga_type} {self.id} ({self.status})"


class SagaStep(models.Model):
    Kind = StepKind
    Status = StepStatus

    saga = models.ForeignKey(SagaInstance, on_delete=models.CASCADE, related_name="steps")
    name = models.CharField(max_length=100)
    kind = models.CharField(max_length=16, choices=StepKind.choices)
    position = models.PositiveIntegerField(help_text="Order of the step in its saga's definition")
    status = models.CharField(max_length=16, choices=StepStatus.choices, default=StepStatus.PENDING)
    attempts = models.PositiveIntegerField(default=0)
    last_error = models.TextField(blank=True)
    not_before = models.DateTimeField(null=True, blank=True, help_text="Next attempt after (backoff)")
    lease_expires_at = models.DateTimeField(null=True, blank=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    duration_ms = models.FloatField(null=True, blank=True, help_text="Time of the last attempt")

    class Meta:
        db_table = "sagas_step"
        ordering = ["saga", "id"]
        indexes = [
            # The sweep: running steps whose lease expired, pending steps whose backoff is over.
            models.Index(
                fields=["lease_expires_at"], condition=Q(status="running"), name="saga_step_lease_idx"
            ),
            models.Index(fields=["not_before"], condition=Q(status="pending"), name="saga_step_due_idx"),
        ]
        constraints = [
            models.UniqueConstraint(fields=["saga", "name", "kind"], name="saga_step_unique_name_kind"),
            models.CheckConstraint(
                condition=Q(status__in=[choice for choice, _ in StepStatus.choices]),
                name="saga_step_status_valid",
            ),
            models.CheckConstraint(
                condition=Q(kind__in=[choice for choice, _ in StepKind.choices]), name="saga_step_kind_valid"
            ),
            models.CheckConstraint(
                condition=Q(status__in=FINISHED_STEP, finished_at__isnull=False)
                | (~Q(status__in=FINISHED_STEP) & Q(finished_at__isnull=True)),
                name="saga_step_finished_at_iff_finished",
            ),
            # Nothing succeeds without having been attempted.
            models.CheckConstraint(
                condition=~Q(status__in=["succeeded", "failed", "running"]) | Q(attempts__gt=0),
                name="saga_step_attempted",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.kind} {self.name} ({self.status})"
