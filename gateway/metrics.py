"""Prometheus metrics of the gateway's proxy path (exposed by /metrics, multiprocess-safe).

Labels stay low-cardinality: the route's *pattern* (never the concrete path), the service name,
the status code.
"""

from prometheus_client import Counter, Histogram

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
