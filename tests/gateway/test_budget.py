"""`timeout_ms` is one budget for the whole request, retries and backoff included."""

from __future__ import annotations

import time

import pytest

from tests.gateway.proxy_support import proxy_route
from tests.support.servers import Reply

pytestmark = pytest.mark.django_db


def timed_get(client, path: str):
    started = time.monotonic()
    response = client.get(path)
    return response, time.monotonic() - started


def test_slow_upstream_is_504_within_the_budget_not_per_attempt(client, http_server_factory):
    upstream = http_server_factory(lambda request: Reply(200, b"late", delay=2.5))
    proxy_route(upstream.url, path="/slow", timeout_ms=2000, retry_count=2)

    response, elapsed = timed_get(client, "/gw/slow")

    assert response.status_code == 504
    assert response["Content-Type"] == "application/problem+json"
    assert response.json()["type"].endswith("/gateway-timeout")
    assert 1.8 <= elapsed <= 3.0  # about 2 s, never 3 × 2.5 s
    assert len(upstream.requests) == 1  # no time was left for a retry


def test_upstream_within_the_budget_is_served(client, http_server_factory):
    upstream = http_server_factory(lambda request: Reply(200, b"in time", delay=1.5))
    proxy_route(upstream.url, path="/slow", timeout_ms=2000, retry_count=2)

    response, elapsed = timed_get(client, "/gw/slow")

    assert response.status_code == 200
    assert response.content == b"in time"
    assert elapsed >= 1.5


def test_retries_and_backoff_never_outlast_the_budget(client, http_server_factory):
    upstream = http_server_factory(lambda request: Reply(503, b"busy", delay=0.4))
    proxy_route(upstream.url, path="/busy", timeout_ms=1000, retry_count=10)

    response, elapsed = timed_get(client, "/gw/busy")

    assert response.status_code in (503, 504)
    assert elapsed <= 1.7
    assert 1 <= len(upstream.requests) <= 3  # 10 retries were allowed, the budget was not


def test_post_that_times_out_is_504_and_not_repeated(client, http_server_factory):
    upstream = http_server_factory(lambda request: Reply(201, b"late", delay=1.5))
    proxy_route(upstream.url, path="/slow", timeout_ms=500, retry_count=2)

    started = time.monotonic()
    response = client.post("/gw/slow", data=b"{}", content_type="application/json")

    assert response.status_code == 504
    assert time.monotonic() - started < 1.4
    assert len(upstream.requests) == 1
