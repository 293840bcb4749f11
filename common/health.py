"""Liveness, readiness and metrics endpoints."""

from __future__ import annotations

import json
import logging

from django.conf import settings
from django.db import connection
from django.http import HttpRequest, HttpResponse

from common.metrics import render_metrics

logger = logging.getLogger(__name__)


def healthz(request: HttpRequest) -> HttpResponse:
    return HttpResponse(b'{"status":"ok"}', content_type="application/json")


def _check_database() -> None:
    with connection.cursor() as cursor:
        cursor.execute("SELECT 1")
        cursor.fetchone()


def _check_cache() -> None:
    if settings.REDIS_URL:
        from django_redis import get_redis_connection

        get_redis_connection("default").ping()


def _check_broker() -> None:
    from kombu import Connection

    with Connection(
        settings.CELERY_BROKER_URL,
        connect_timeout=1,
        transport_options=settings.CELERY_BROKER_TRANSPORT_OPTIONS,
    ) as conn:
        conn.ensure_connection(max_retries=1, timeout=1)


def _check_rate_limits() -> None:
    from gateway.policies.rate_limit import rate_limit_check

    rate_limit_check()


CHECKS = {
    "database": _check_database,
    "cache": _check_cache,
    "broker": _check_broker,
    "rate_limits": _check_rate_limits,
}


def readyz(request: HttpRequest) -> HttpResponse:
    results: dict[str, str] = {}
    for name, check in CHECKS.items():
        try:
            check()
            results[name] = "ok"
        except Exception as exc:  # readiness reports; it never raises
            logger.warning("readiness check %s failed: %s", name, exc)
            results[name] = f"unavailable: {type(exc).__name__}"
    ready = all(value == "ok" for value in results.values())
    body = {"status": "ok" if ready else "unavailable", "checks": results}
    return HttpResponse(json.dumps(body), status=200 if ready else 503, content_type="application/json")


def metrics(request: HttpRequest) -> HttpResponse:
    payload, content_type = render_metrics()
    return HttpResponse(payload, content_type=content_type)
