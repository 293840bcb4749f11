"""Liveness, readiness and metrics endpoints.

Readiness fails (503) only for what makes this instance useless: its database. The cache (Redis),
the broker and the token keys are reported in the body and as the gauge
`gatehouse_dependency_up{dependency}` in /metrics, with 200: the gateway keeps serving without them
(SPEC), and a probe that pulled every instance out on a Redis outage would turn it into a full one.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterable

from django.conf import settings
from django.db import connection
from django.http import HttpRequest, HttpResponse
from prometheus_client.core import GaugeMetricFamily

from common.metrics import register_scrape_collector, render_metrics

logger = logging.getLogger(__name__)


def healthz(request: HttpRequest) -> HttpResponse:
    return HttpResponse(b'{"status":"ok"}', content_type="application/json")


def _check_database() -> str:
    with connection.cursor() as cursor:
        cursor.execute("SELECT 1")
        cursor.fetchone()
    return "ok"


def _check_cache() -> str:
    if not settings.REDIS_URL:
        return "ok (embedded: per-process memory, no Redis)"
    from django_redis import get_redis_connection

    get_redis_connection("default").ping()
    return "ok"


def _check_broker() -> str:
    from kombu import Connection

    with Connection(
        settings.CELERY_BROKER_URL,
        connect_timeout=1,
        transport_options=settings.CELERY_BROKER_TRANSPORT_OPTIONS,
    ) as conn:
        conn.ensure_connection(max_retries=1, timeout=1)
    return "ok"


def _check_token_keys() -> str:
    from gateway.services.jwks import NO_KEY_SOURCE, token_key_source

    source = token_key_source()
    if source == "none":
        raise RuntimeError(NO_KEY_SOURCE)
    if source == "dev_key":
        return "ok (development key, JWT_JWKS_URL unset)"
    import requests

    response = requests.get(settings.JWT_JWKS_URL, timeout=(0.5, 1.0))
    response.raise_for_status()
    return "ok"


def _check_rate_limits() -> str:
    from gateway.policies.rate_limit import rate_limit_check

    rate_limit_check()
    return "ok"


CRITICAL: dict[str, Callable[[], str]] = {"database": _check_database}
NON_CRITICAL: dict[str, Callable[[], str]] = {
    "cache": _check_cache,
    "broker": _check_broker,
    "token_keys": _check_token_keys,
    "rate_limits": _check_rate_limits,
}


def readiness() -> tuple[bool, dict[str, str]]:
    """(ready, result per check): ready iff every critical check passed."""
    results: dict[str, str] = {}
    for name, check in {**CRITICAL, **NON_CRITICAL}.items():
        try:
            results[name] = check()
        except Exception as exc:  # readiness reports; it never raises
            logger.warning("readiness check %s failed: %s", name, exc)
            detail = str(exc) if name == "token_keys" else type(exc).__name__
            results[name] = f"unavailable: {detail}"
    ready = all(results[name].startswith("ok") for name in CRITICAL)
    return ready, results


def readyz(request: HttpRequest) -> HttpResponse:
    ready, results = readiness()
    degraded = [name for name, value in results.items() if not value.startswith("ok")]
    status = "unavailable" if not ready else ("degraded" if degraded else "ok")
    body = {"status": status, "checks": results, "degraded": degraded}
    return HttpResponse(json.dumps(body), status=200 if ready else 503, content_type="application/json")


def collect_dependencies() -> Iterable[GaugeMetricFamily]:
    _, results = readiness()
    gauge = GaugeMetricFamily(
        "gatehouse_dependency_up",
        "1 when a dependency answers the readiness check (database critical; others degrade only).",
        labels=["dependency"],
    )
    for name, value in results.items():
        gauge.add_metric([name], 1.0 if value.startswith("ok") else 0.0)
    yield gauge


register_scrape_collector(collect_dependencies)


def metrics(request: HttpRequest) -> HttpResponse:
    payload, content_type = render_metrics()
    return HttpResponse(payload, content_type=content_type)
