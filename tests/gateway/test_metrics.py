"""Request metrics by route and status, upstream latency, multiprocess-safe /metrics."""

from __future__ import annotations

import re
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from tests.gateway.proxy_support import proxy_route
from tests.support.servers import Reply


def scraped(text: str, name: str, **labels: str) -> float:
    """A sample of a /metrics scrape (0 when absent)."""
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and sample.labels == labels:
                return sample.value
    return 0.0


@pytest.mark.django_db(transaction=True)
def test_requests_are_counted_by_route_pattern_and_status(gw, http_server_factory):
    upstream = http_server_factory(
        lambda request: Reply(404) if request.path.endswith("/missing") else Reply(200, b"ok")
    )
    proxy_route(upstream.url, path="/metered/{item}")
    gw.sync()
    service = upstream_service()
    before = gw.metrics()

    def grew(name: str, **labels: str) -> float:
        return scraped(gw.metrics(), name, **labels) - scraped(before, name, **labels)

    gw.get("/gw/metered/1")
    gw.get("/gw/metered/2")
    gw.get("/gw/metered/missing")
    gw.get("/gw/not-routed")

    assert grew("gateway_requests_total", route="/metered/{item}", method="GET", status="200") == 2
    assert grew("gateway_requests_total", route="/metered/{item}", method="GET", status="404") == 1
    assert grew("gateway_requests_total", route="unmatched", method="GET", status="404") >= 1
    assert grew("gateway_upstream_latency_seconds_count", service=service, outcome="200") == 2
    body = gw.metrics()
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

    # given: requests until both workers have served some (a worker may boot late on a loaded
    # machine), each worker counting in its own file
    sent = 0
    deadline = time.monotonic() + 30
    while len(workers_that_counted(tmp_path, route="/multi")) < 2 and time.monotonic() < deadline:
        with ThreadPoolExecutor(4) as pool:  # concurrent new connections spread over the workers
            statuses = list(
                pool.map(lambda _: requests.get(f"{gateway}/gw/multi", timeout=10).status_code, range(8))
            )
        assert statuses == [200] * 8
        sent += 8
    assert len(workers_that_counted(tmp_path, route="/multi")) == 2

    # then: every scrape, whichever worker answers it, counts all of them
    pattern = re.compile(r'gateway_requests_total\{method="GET",route="/multi",status="200"\} (\S+)')
    for _ in range(4):
        text = requests.get(f"{gateway}/metrics", timeout=10).text
        assert float(pattern.search(text).group(1)) == sent


def workers_that_counted(directory, *, route: str) -> set[str]:
    """Pids whose multiprocess counter file holds a gateway_requests_total sample for `route`."""
    from prometheus_client.mmap_dict import MmapedDict

    pids = set()
    for path in directory.glob("counter_*.db"):
        values = MmapedDict.read_all_values_from_file(str(path))
        if any(
            '"gateway_requests_total"' in key and f'"{route}"' in key and value for key, value, *_ in values
        ):
            pids.add(path.stem.rsplit("_", 1)[-1])
    return pids


def cache_key_figures(text: str) -> dict[str, float]:
    return {
        kind: float(value)
        for kind, value in re.findall(r'^gatehouse_cache_keys\{kind="(\w+)"\} (\S+)$', text, re.MULTILINE)
    }


@pytest.mark.django_db
def test_metrics_report_cache_keys_per_kind(client):
    from django.core.cache import cache
    from freezegun import freeze_time

    with freeze_time("2030-01-01 12:00:00") as clock:
        # given
        cache.set("routes:/users/1:GET", {"route": 1}, 60)
        for n in range(2):
            cache.set(f"rbac:u-{n}:t-1", {"permissions": []}, 60)
        for n in range(3):
            cache.set(f"revoked:jti-{n}", "false", 60)
        cache.set("jwks:public_key", {"keys": []}, 60)
        cache.set("gatehouse:cache-stats-like", 1, 60)  # not a cache kind

        # when / then
        figures = cache_key_figures(client.get("/metrics").content.decode())
        assert figures == {"routes": 1, "rbac": 2, "revoked": 3, "jwks": 1, "responses": 0}

        # a scrape storm does not SCAN again: the figures are kept for a few seconds
        cache.set("revoked:jti-late", "true", 60)
        assert cache_key_figures(client.get("/metrics").content.decode())["revoked"] == 3
        clock.tick(16)
        assert cache_key_figures(client.get("/metrics").content.decode())["revoked"] == 4


@pytest.mark.django_db
def test_metrics_scrape_still_answers_with_redis_down(client, settings):
    from tests.support.servers import free_port

    settings.REDIS_URL = f"redis://127.0.0.1:{free_port()}/0"
    settings.CACHES = {"default": {**settings.CACHES["default"], "LOCATION": settings.REDIS_URL}}

    response = client.get("/metrics")

    assert response.status_code == 200
    assert cache_key_figures(response.content.decode()) == {}  # no figure rather than a wrong one
