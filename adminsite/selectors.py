"""The staff dashboard's figures, read from the shared store (traffic, circuits) and the database."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from django.apps import apps
from django.conf import settings
from django.db.models import Count, Min, Q
from django.utils import timezone

from adminsite import store


@dataclass
class RouteTraffic:
    route: str
    requests: int = 0
    errors_5xx: int = 0
    errors_4xx: int = 0
    p99_ms: float | None = None
    # (requests, 5xx) per minute, oldest first, the current (partial) minute last
    per_minute: list[tuple[int, int]] = field(default_factory=list)

    @property
    def error_rate(self) -> float:
        return self.errors_5xx / self.requests if self.requests else 0.0


def _p99_ms(buckets: dict[int, int]) -> float | None:
    total = sum(buckets.values())
    if not total:
        return None
    rank, seen = 0.99 * total, 0
    for index in sorted(buckets):
        seen += buckets[index]
        if seen >= rank:
            return store.latency_bucket_upper_ms(index)
    return store.latency_bucket_upper_ms(max(buckets))


def dashboard_traffic(*, now: float | None = None) -> list[RouteTraffic]:
    """Per route pattern over the last hour (every process), busiest first."""
    current = int((now if now is not None else time.time()) // 60)
    minutes = list(range(current - store.WINDOW_MINUTES + 1, current + 1))
    traffic = store.traffic_read(minutes=minutes)
    totals: dict[str, store.MinuteCell] = {}
    for (_, route), cell in traffic.items():
        totals.setdefault(route, store.MinuteCell()).add(cell)
    result = []
    for route, total in totals.items():
        per_minute = []
        for minute in minutes:
            cell = traffic.get((minute, route))
            per_minute.append((cell.requests, cell.errors_5xx) if cell else (0, 0))
        result.append(
            RouteTraffic(
                route=route,
                requests=total.requests,
                errors_5xx=total.errors_5xx,
                errors_4xx=total.errors_4xx,
                p99_ms=_p99_ms(total.buckets),
                per_minute=per_minute,
            )
        )
    return sorted(result, key=lambda row: (-row.requests, row.route))


@dataclass
class CircuitReport:
    process: str
    state: str  # open | half_open
    failures: int
    reopens_in: float | None  # seconds until an open circuit lets a probe through
    reported_at: datetime


@dataclass
class TargetCircuit:
    service: str
    target: str
    enabled: bool
    reports: list[CircuitReport] = field(default_factory=list)

    @property
    def state(self) -> str:
        states = {report.state for report in self.reports}
        return "open" if "open" in states else "half_open" if states else "closed"


@dataclass
class CircuitFigures:
    targets: list[TargetCircuit]
    processes_reporting: int


def dashboard_circuits(*, now: float | None = None) -> CircuitFigures:
    """Each target's state in every web process that reported one (they are per process)."""
    from gateway.models import ServiceTarget

    wall = now if now is not None else time.time()
    by_target: dict[str, TargetCircuit] = {}
    for target in ServiceTarget.objects.select_related("service").order_by("service__name", "url"):
        by_target[target.url] = TargetCircuit(
            service=target.service.name, target=target.url, enabled=target.enabled and target.service.enabled
        )
    snapshots = store.circuits_read()
    for snapshot in snapshots:
        reported_at = datetime.fromtimestamp(snapshot.get("updated_at", wall), tz=UTC)
        for target, state in (snapshot.get("states") or {}).items():
            open_until = state.get("open_until")
            kind = state.get("state", "open")
            if kind == "open" and open_until is not None and open_until <= wall:
                kind = "half_open"  # its reset period is over: the next request is a probe
            row = by_target.setdefault(
                target, TargetCircuit(service="(not configured)", target=target, enabled=False)
            )
            row.reports.append(
                CircuitReport(
                    process=str(snapshot.get("process", "?")),
                    state=kind,
                    failures=int(state.get("failures") or 0),
                    reopens_in=max(0.0, open_until - wall) if kind == "open" and open_until else None,
                    reported_at=reported_at,
                )
            )
    order = {"open": 0, "half_open": 1, "closed": 2}
    targets = sorted(by_target.values(), key=lambda row: (order[row.state], row.service, row.target))
    return CircuitFigures(targets=targets, processes_reporting=len(snapshots))


@dataclass
class OutboxFigures:
    pending: int
    dead: int
    lag_seconds: float  # age of the oldest pending event, 0 when none is pending
    published_last_hour: int


def dashboard_outbox(*, now: datetime | None = None) -> OutboxFigures:
    from outbox.models import OutboxEvent

    moment = now or timezone.now()
    figures = OutboxEvent.objects.filter(
        Q(status__in=[OutboxEvent.Status.PENDING, OutboxEvent.Status.DEAD])
        | Q(published_at__gte=moment - timedelta(hours=1))
    ).aggregate(
        pending=Count("id", filter=Q(status=OutboxEvent.Status.PENDING)),
        dead=Count("id", filter=Q(status=OutboxEvent.Status.DEAD)),
        published=Count("id", filter=Q(published_at__gte=moment - timedelta(hours=1))),
        oldest=Min("created_at", filter=Q(status=OutboxEvent.Status.PENDING)),
    )
    oldest = figures["oldest"]
    return OutboxFigures(
        pending=figures["pending"],
        dead=figures["dead"],
        lag_seconds=max(0.0, (moment - oldest).total_seconds()) if oldest else 0.0,
        published_last_hour=figures["published"],
    )


@dataclass
class OrderFigures:
    by_status: list[tuple[str, str, int]]  # (value, label, count) in the model's order
    overdue: int  # pending past their expiration, not yet swept
    expiring: list[Any]  # pending orders due within the window, soonest first
    expiring_count: int
    expiring_minutes: int


def dashboard_orders(*, now: datetime | None = None, listed: int = 10) -> OrderFigures:
    from orders.models import Order, OrderStatus

    moment = now or timezone.now()
    minutes = settings.DASHBOARD_EXPIRING_MINUTES
    counts = dict(Order.objects.order_by().values_list("status").annotate(count=Count("id")))
    pending = Order.objects.filter(status=OrderStatus.PENDING_PAYMENT)
    soon = pending.filter(
        expiration_time__gte=moment, expiration_time__lt=moment + timedelta(minutes=minutes)
    )
    return OrderFigures(
        by_status=[(value, label, counts.get(value, 0)) for value, label in OrderStatus.choices],
        overdue=pending.filter(expiration_time__lt=moment).count(),
        expiring=list(
            soon.order_by("expiration_time").only("id", "expiration_time", "total_amount", "currency")[
                :listed
            ]
        ),
        expiring_count=soon.count(),
        expiring_minutes=minutes,
    )


def saga_model() -> Any | None:
    """The sagas app's instance model once that app is installed, else None."""
    if not apps.is_installed("sagas"):
        return None
    try:
        return apps.get_model("sagas", "SagaInstance")
    except LookupError:
        return None


def dashboard_sagas() -> list[tuple[str, int]] | None:
    """Sagas by status, or None when there is no sagas app."""
    model = saga_model()
    if model is None:
        return None
    counts = dict(model.objects.order_by().values_list("status").annotate(count=Count("pk")))
    status_field = model._meta.get_field("status")
    values = [value for value, _ in status_field.choices] if status_field.choices else sorted(counts)
    return [(value, counts.get(value, 0)) for value in values]
