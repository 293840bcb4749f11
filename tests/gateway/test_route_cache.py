"""The route cache layers: per-process table and matches, Redis `routes:{path}:{method}`,
versioned entries, and routing straight from the database when Redis is unreachable."""

from __future__ import annotations

import copy
import logging
import socket
import time

import pytest
import requests
from django.conf import settings
from django_redis import get_redis_connection

from common.local_cache import reset_all_local_caches
from gateway.routing import VERSION_KEY, route_resolve
from gateway.services.routes import route_save
from tests.gateway.factories import RouteFactory, ServiceFactory
from tests.support.servers import Reply, free_port

pytestmark = pytest.mark.django_db


@pytest.fixture
def hang_redis(settings):
    """Call it to point the cache at a port that accepts connections and never answers (a hung
    Redis): every call would cost the full 0.25 s socket timeout without the breaker."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(128)
    url = f"redis://127.0.0.1:{listener.getsockname()[1]}/2"

    def hang() -> None:
        caches = copy.deepcopy(settings.CACHES)
        caches["default"]["LOCATION"] = url
        settings.CACHES = caches
        settings.REDIS_URL = url

    yield hang
    listener.close()


def test_resolution_is_shared_under_the_spec_key():
    route = RouteFactory(path="/users/{user_id}", methods=["GET"])

    route_resolve(method="GET", path="/users/1")

    client = get_redis_connection("default")
    assert client.exists("routes:/users/1:GET")
    assert 0 < client.ttl("routes:/users/1:GET") <= settings.GATEWAY_ROUTE_CACHE_TTL
    assert route.pk


def test_a_cold_process_resolves_from_redis_without_the_database(django_assert_num_queries):
    route = RouteFactory(path="/users/{user_id}", methods=["GET"])
    route_resolve(method="GET", path="/users/1")
    reset_all_local_caches()  # what a freshly started process holds

    with django_assert_num_queries(0):
        match = route_resolve(method="GET", path="/users/1")

    assert match.route.id == route.id and match.params == {"user_id": "1"}


def test_a_405_is_shared_but_a_404_is_not():
    RouteFactory(path="/users/{user_id}", methods=["GET"])
    client = get_redis_connection("default")

    for method, path in (("POST", "/users/1"), ("GET", "/nothing/here")):
        with pytest.raises(Exception):  # noqa: B017
            route_resolve(method=method, path=path)

    assert client.exists("routes:/users/1:POST")
    assert not client.exists("routes:/nothing/here:GET")  # random paths must not fill Redis


def test_an_entry_written_under_an_older_version_is_ignored():
    service = ServiceFactory()
    RouteFactory(path="/users/**", methods=["GET"], service=service)
    route_resolve(method="GET", path="/users/me")
    client = get_redis_connection("default")
    stale = client.get("routes:/users/me:GET")
    version = int(client.get(VERSION_KEY))

    specific = RouteFactory(path="/users/me", methods=["GET"], service=service)  # bumps the version
    # a process that had not yet heard of the change writes its old answer back
    client.set("routes:/users/me:GET", stale, ex=300)
    reset_all_local_caches()

    assert int(client.get(VERSION_KEY)) == version + 1
    assert route_resolve(method="GET", path="/users/me").route.id == specific.id


def test_a_change_removes_the_shared_entries():
    route = RouteFactory(path="/users/{user_id}", methods=["GET"])
    route_resolve(method="GET", path="/users/1")
    client = get_redis_connection("default")
    assert client.exists("routes:/users/1:GET")

    RouteFactory(path="/other", service=route.service)

    assert not client.exists("routes:/users/1:GET")


def test_warm_resolution_costs_microseconds_and_touches_neither_database_nor_redis(
    hang_redis, django_assert_num_queries, caplog
):
    RouteFactory(path="/users/{user_id}/orders/{order_id}", methods=["GET"])
    route_resolve(method="GET", path="/users/1/orders/2")
    hang_redis()  # from now on any Redis call would hang, open the breaker and log
    caplog.set_level(logging.WARNING, logger="gatehouse.cache")

    calls = 20_000
    with django_assert_num_queries(0):
        started = time.perf_counter()
        for _ in range(calls):
            route_resolve(method="GET", path="/users/1/orders/2")
        elapsed = time.perf_counter() - started

    per_call_us = elapsed / calls * 1e6
    print(f"warm route_resolve: {per_call_us:.2f} µs per call")
    assert per_call_us < 50
    assert "shared cache unavailable" not in caplog.text


def test_redis_hung_routing_works_from_the_database_fast_and_logs_once(hang_redis, caplog):
    caplog.set_level(logging.WARNING, logger="gatehouse.cache")
    hang_redis()
    route = RouteFactory(path="/users/{user_id}", methods=["GET"])

    started = time.monotonic()
    matches = [route_resolve(method="GET", path=f"/users/{n}") for n in range(50)]
    elapsed = time.monotonic() - started

    assert {m.route.id for m in matches} == {route.id}
    # one socket timeout (0.25 s) opens the breaker; without it: 50 × 2 calls × 0.25 s
    assert elapsed < 2.0, elapsed
    assert caplog.text.count("shared cache unavailable") == 1


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("redis", ["unreachable", "not configured"])
def test_without_redis_a_change_still_reaches_a_server_process_within_a_second(
    http_server_factory, gateway_process_factory, redis
):
    # No invalidation message can arrive (Redis down, or the embedded mode's local-memory cache):
    # the process polls the database's routes version, bumped with the change.
    old = http_server_factory(lambda request: Reply(200, b"old"))
    route = RouteFactory(
        path="/items/**", methods=["GET"], auth_required=False, service=ServiceFactory(targets=[old.url])
    )
    redis_url = f"redis://127.0.0.1:{free_port()}/2" if redis == "unreachable" else ""
    gateway = gateway_process_factory({"REDIS_URL": redis_url})
    assert requests.get(f"{gateway}/gw/items/1", timeout=10).content == b"old"

    latencies = []
    # Three changes in a row, each to an upstream never served before (a worker whose table is
    # stale cannot answer it by chance). The short degraded TTLs (1-2 s) alone miss 1 s in most
    # of them; the database's routes version, polled every 0.25 s, never does.
    for expected in (b"second", b"third", b"fourth"):
        upstream = http_server_factory(lambda request, body=expected: Reply(200, body))
        route.service = ServiceFactory(targets=[upstream.url])
        route_save(route=route)  # what the admin and load_routes call
        changed = time.monotonic()
        latency, in_a_row = None, 0
        while time.monotonic() - changed < 10 and in_a_row < 10:
            # a new connection each time, so both workers answer: each must have the change
            seen = requests.get(f"{gateway}/gw/items/1", timeout=5).content == expected
            in_a_row = in_a_row + 1 if seen else 0
            if in_a_row == 1:
                latency = time.monotonic() - changed
            time.sleep(0.01)
        latencies.append(latency if in_a_row == 10 else None)
    print(f"changes without Redis ({redis}) seen after {latencies}")
    assert all(latency is not None and latency < 1.0 for latency in latencies), latencies
