"""Outbox figures for Prometheus: published/failed counters, and backlog read at scrape time."""

from __future__ import annotations

from collections.abc import Iterable

from django.db.models import Count, Min, Q
from django.utils import timezone
from prometheus_client import Counter
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.metrics_core import Metric

published_total = Counter(
    "outbox_events_published_total",
    "Outbox events confirmed by the publisher (rate() gives events per second).",
)
publish_failures_total = Counter(
    "outbox_publish_failures_total",
    "Outbox publish attempts that failed (each backs off; dead after OUTBOX_MAX_ATTEMPTS).",
)


def collect_backlog() -> Iterable[Metric]:
    """pending, dead and lag (age of the oldest pending event), read from the database."""
    from outbox.models import OutboxEvent

    figures = OutboxEvent.objects.filter(
        status__in=[OutboxEvent.Status.PENDING, OutboxEvent.Status.DEAD]
    ).aggregate(
        pending=Count("id", filter=Q(status=OutboxEvent.Status.PENDING)),
        dead=Count("id", filter=Q(status=OutboxEvent.Status.DEAD)),
        oldest=Min("created_at", filter=Q(status=OutboxEvent.Status.PENDING)),
    )
    pending = GaugeMetricFamily("outbox_events_pending", "Outbox events waiting to be published.")
    pending.add_metric([], figures["pending"])
    yield pending
    dead = GaugeMetricFamily("outbox_events_dead", "Outbox events that exhausted their attempts.")
    dead.add_metric([], figures["dead"])
    yield dead
    oldest = figures["oldest"]
    lag = GaugeMetricFamily(
        "outbox_lag_seconds", "Age of the oldest pending outbox event (0 when none is pending)."
    )
    lag.add_metric([], (timezone.now() - oldest).total_seconds() if oldest else 0.0)
    yield lag
