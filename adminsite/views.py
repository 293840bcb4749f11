"""The staff dashboard page (admin): traffic, circuits, outbox, orders and sagas at a glance."""

from __future__ import annotations

import logging
import time

from django.contrib import admin
from django.http import HttpRequest, HttpResponse
from django.template.response import TemplateResponse

from adminsite import charts, selectors

logger = logging.getLogger(__name__)


def _traffic_rows(now: float) -> tuple[list[dict[str, object]], str | None]:
    try:
        traffic = selectors.dashboard_traffic(now=now)
    except Exception as exc:  # shared store down: the rest of the page still answers
        logger.warning("dashboard traffic unavailable: %s", exc)
        return [], f"Traffic figures are unavailable ({type(exc).__name__}): the shared cache did not answer."
    last_minute = int(now // 60)
    rows = [
        {"figures": row, "chart": charts.traffic_sparkline(row.per_minute, last_minute=last_minute)}
        for row in traffic
    ]
    return rows, None


def _circuits(now: float) -> tuple[selectors.CircuitFigures | None, str | None]:
    try:
        return selectors.dashboard_circuits(now=now), None
    except Exception as exc:
        logger.warning("dashboard circuits unavailable: %s", exc)
        return (
            None,
            f"Circuit states are unavailable ({type(exc).__name__}): the shared cache did not answer.",
        )


def dashboard_view(request: HttpRequest) -> HttpResponse:
    now = time.time()
    traffic, traffic_error = _traffic_rows(now)
    circuits, circuits_error = _circuits(now)
    orders = selectors.dashboard_orders()
    sagas = selectors.dashboard_sagas()
    context = {
        **admin.site.each_context(request),
        "title": "Dashboard",
        "traffic": traffic,
        "traffic_error": traffic_error,
        "circuits": circuits,
        "circuits_error": circuits_error,
        "outbox": selectors.dashboard_outbox(),
        "orders": orders,
        "orders_chart": charts.status_bars(orders.by_status),
        "sagas_chart": charts.status_bars([(value, value, count) for value, count in sagas])
        if sagas is not None
        else None,
        "sagas": sagas,
    }
    return TemplateResponse(request, "admin/dashboard.html", context)
