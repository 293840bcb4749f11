"""Redis unreachable: the gateway keeps proxying (routes come from the database)."""

from __future__ import annotations

import time

import pytest
import requests

from tests.gateway.proxy_support import proxy_route
from tests.support.servers import Reply, free_port


@pytest.mark.django_db(transaction=True)
def test_proxy_serves_while_redis_is_unreachable(http_server_factory, gateway_process_factory):
    upstream = http_server_factory(lambda request: Reply(200, b"still here"))
    proxy_route(upstream.url, path="/resilient/**", cache_ttl_seconds=30)
    # a Redis URL nobody listens on: the real Redis of the machine is never stopped
    gateway = gateway_process_factory({"REDIS_URL": f"redis://127.0.0.1:{free_port()}/4"})

    started = time.monotonic()
    responses = [requests.get(f"{gateway}/gw/resilient/{n}", timeout=10) for n in range(5)]
    elapsed = time.monotonic() - started

    assert [r.status_code for r in responses] == [200] * 5
    assert all(r.content == b"still here" for r in responses)
    assert len(upstream.requests) == 5  # the response cache is skipped, not faked
    assert elapsed < 5
    # Readiness fails only for the database: a Redis outage must not pull every instance out.
    ready = requests.get(f"{gateway}/readyz", timeout=10)
    assert ready.status_code == 200
    assert ready.json()["status"] == "degraded"
    assert ready.json()["checks"]["database"] == "ok"
    assert ready.json()["checks"]["cache"].startswith("unavailable")
    assert "cache" in ready.json()["degraded"]
    metrics = requests.get(f"{gateway}/metrics", timeout=10).text
    assert 'gatehouse_dependency_up{dependency="cache"} 0.0' in metrics
    assert 'gatehouse_dependency_up{dependency="database"} 1.0' in metrics
