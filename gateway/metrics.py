"""Prometheus metrics of the gateway's proxy path (exposed by /metrics, multiprocess-safe).

Labels stay low-cardinality: the route's *pattern* (never the concrete path), the service name,
the status code. Cache sizes are read at scrape time (`collect_cache_keys`, registered in apps.py).
"""

from collections.abc import Iterable
from typing import Any

from prometheus_client import Counter, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.metrics_core import Metric

requests_total = Counter(
    "gateway_requests_total",
    "Requests served under /gw, by route pattern, method and response status.",
    ["route", "method", "status"],
)
request_duration = Histogram(
    "gateway_request_duration_seconds",
    "Time from request to response headers at the gateway, by route pattern.",
    ["route"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
upstream_latency = Histogram(
    "gateway_upstream_latency_seconds",
    "One attempt against an upstream target, by service and outcome (status or error kind).",
    ["service", "outcome"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
upstream_retries = Counter(
    "gateway_upstream_retries_total", "Attempts repeated after a failed one, by service.", ["service"]
)
circuit_opened = Counter(
    "gateway_circuit_opened_total", "Times a target's circuit opened, by service.", ["service"]
)

_KNOWN_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
_request_children: dict[tuple[str, str, int], tuple[Any, Any]] = {}


def request_observe(*, route: str, method: str, status: int, duration: float) -> None:
    """Count one /gw request and its time to the response head.

    The labelled children are kept per (route, method, status): `labels()` validates and locks on
    every call, and this runs for every request. The key space is what the labels already are
    (route patterns × methods × statuses), so the dict is as bounded as the metric itself."""
    key = (route, method, status)
    children = _request_children.get(key)
    if children is None:
        label_method = method if method in _KNOWN_METHODS else "OTHER"
        children = _request_children[key] = (
            requests_total.labels(route, label_method, str(status)),
            request_duration.labels(route),
        )
    children[0].inc()
    children[1].observe(duration)


def collect_cache_keys() -> Iterable[Metric]:
    """`gatehouse_cache_keys{kind}`: keys of each cache kind in Redis (a SCAN at most every 15 s).

    Computed at scrape time, not a multiprocess gauge: it is one figure for the shared cache,
    whichever worker answers. Nothing is reported while Redis is down.
    """
    from gateway.services.cache_stats import cache_key_counts_recent

    counts = cache_key_counts_recent()
    if counts is None:
        return
    family = GaugeMetricFamily(
        "gatehouse_cache_keys",
        "Keys in the shared cache by kind (routes, rbac, revoked, jwks, responses), counted by SCAN.",
        labels=["kind"],
    )
    for kind, count in counts.items():
        family.add_metric([kind], count)
    yield family
