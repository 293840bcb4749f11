"""Request metrics by route and status, upstream latency, multiprocess-safe /metrics."""

from __future__ import annotations

import re
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests
from prometheus_client import REGISTRY

from tests.gateway.proxy_support import proxy_route
from tests.support.servers import Reply


def sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


@pytest.mark.django_db
def test_requests_are_counted_by_route_pattern_and_status(client, http_server_factory):
    upstream = http_server_factory(
        lambda request: Reply(404) if request.path.endswith("/missing") else Reply(200, b"ok")
    )
    proxy_route(upstream.url, path="/metered/{item}")
    ok_before = sample("gateway_requests_total", route="/metered/{item}", method="GET", status="200")
    missing_before = sample("gateway_requests_total", route="/metered/{item}", method="GET", status="404")
    latency_before = sample(
        "gateway_upstream_latency_seconds_count", service=upstream_service(), outcome="200"
    )

    client.get("/gw/metered/1")
    client.get("/gw/metered/2")
    client.get("/gw/metered/missing")
    client.get("/gw/not-routed")

    assert (
        sample("gateway_requests_total", route="/metered/{item}", method="GET", status="200") == ok_before + 2
    )
    assert (
        sample("gateway_requests_total", route="/metered/{item}", method="GET", status="404")
        == missing_before + 1
    )
    assert sample("gateway_requests_total", route="unmatched", method="GET", status="404") >= 1
    assert (
        sample("gateway_upstream_latency_seconds_count", service=upstream_service(), outcome="200")
        == latency_before + 2
    )
    body = client.get("/metrics").content.decode()
    assert 'gateway_requests_total{method="GET",route="/metered/{item}",status="200"}' in body


def upstream_service() -> str:
    from gateway.models import Route

    return Route.objects.get(path="/metered/{item}").service.name


@pytest.mark.django_db(transaction=True)
def test_metrics_add_up_across_worker_processes(http_server_factory, gateway_process_factory, tmp_path):
    upstream = http_server_factory(lambda request: Reply(200, b"ok"))
    proxy_route(upstream.url, path="/multi")
    gateway = gateway_process_factory(
        {"PROMETHEUS_MULTIPROC_DIR": str(tmp_path), "WEB_WORKERS": "2", "WEB_THREADS": "2"}
    )

    # concurrent requests on new connections: both workers accept some
    with ThreadPoolExecutor(4) as pool:
        statuses = list(
            pool.map(lambda _: requests.get(f"{gateway}/gw/multi", timeout=10).status_code, range(20))
        )
    assert statuses == [200] * 20

    # every scrape, whichever worker answers it, counts all 20
    pattern = re.compile(r'gateway_requests_total\{method="GET",route="/multi",status="200"\} (\S+)')
    for _ in range(4):
        text = requests.get(f"{gateway}/metrics", timeout=10).text
        assert float(pattern.search(text).group(1)) == 20.0
    files = {path.name.rsplit("_", 1)[-1] for path in tmp_path.glob("counter_*.db")}
    assert len(files) == 2, "both workers should have written their own counters"
