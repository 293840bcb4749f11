"""Reads of sagas for operators (commands, admin, metrics)."""

from __future__ import annotations

from datetime import datetime, timedelta

from django.db.models import Exists, OuterRef, Q, QuerySet
from django.utils import timezone

from sagas.models import SagaInstance, SagaStatus, SagaStep, StepStatus

STUCK_GRACE = timedelta(seconds=60)


def stuck_q(*, now: datetime) -> Q:
    """Failed, or open and past its deadline (plus grace), or holding a lease long expired."""
    expired_lease = SagaStep.objects.filter(
        saga=OuterRef("pk"), status=StepStatus.RUNNING, lease_expires_at__lt=now - STUCK_GRACE
    )
    open_ = [SagaStatus.RUNNING, SagaStatus.COMPENSATING]
    return (
        Q(status=SagaStatus.FAILED)
        | Q(status__in=open_, deadline__lt=now - STUCK_GRACE)
        | (Q(status__in=open_) & Q(Exists(expired_lease)))
    )


def saga_list(
    *,
    stuck: bool = False,
    saga_type: str | None = None,
    status: str | None = None,
    now: datetime | None = None,
) -> QuerySet[SagaInstance]:
    queryset = SagaInstance.objects.order_by("-created_at")
    if stuck:
        queryset = queryset.filter(stuck_q(now=now or timezone.now()))
    if saga_type:
        queryset = queryset.filter(saga_type=saga_type)
    if status:
        queryset = queryset.filter(status=status)
    return queryset
