"""Saga figures for Prometheus: outcomes, step durations and compensations counted after
commit; open sagas by status and stuck sagas (past their deadline) read at scrape time."""

from __future__ import annotations

from collections.abc import Iterable

from django.db.models import Count
from django.utils import timezone
from prometheus_client import Counter, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.metrics_core import Metric

SAGAS_FINISHED = Counter(
    "gatehouse_sagas_total",
    "Sagas started and finished, by type and outcome (started, completed, compensated, failed).",
    ["saga_type", "outcome"],
)
STEP_DURATION = Histogram(
    "gatehouse_saga_step_duration_seconds",
    "Duration of one attempt of a saga step, by type, step and result.",
    ["saga_type", "step", "result"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
COMPENSATIONS = Counter(
    "gatehouse_saga_compensations_total",
    "Compensation steps that succeeded, by saga type and step.",
    ["saga_type", "step"],
)


def collect_sagas() -> Iterable[Metric]:
    from sagas.models import SagaInstance

    now = timezone.now()
    rows = SagaInstance.objects.values("saga_type", "status").annotate(count=Count("id"))
    by_status = GaugeMetricFamily(
        "gatehouse_sagas_by_status",
        "Sagas in the database by type and status.",
        labels=["saga_type", "status"],
    )
    for row in rows:
        by_status.add_metric([row["saga_type"], row["status"]], row["count"])
    yield by_status
    stuck = GaugeMetricFamily(
        "gatehouse_sagas_stuck",
        "Sagas failed, or open and past their deadline or lease by more than a minute (need an operator).",
        labels=["saga_type"],
    )
    from sagas.selectors import stuck_q

    figures = SagaInstance.objects.filter(stuck_q(now=now)).values("saga_type").annotate(count=Count("id"))
    for row in figures:
        stuck.add_metric([row["saga_type"]], row["count"])
    yield stuck
