"""GET response cache (`cache_ttl_seconds`): through the production server's /gw with a real
upstream, and the service functions for the per-identity scope."""

from __future__ import annotations

import asyncio
import itertools
from concurrent.futures import ThreadPoolExecutor

import pytest
from django_redis import get_redis_connection
from freezegun import freeze_time

from gateway.routing import route_resolve
from gateway.services.response_cache import (
    CachedResponse,
    response_cache_aget,
    response_cache_aset,
)
from gateway.services.routes import route_save
from gateway.types import Identity
from tests.gateway.factories import RouteFactory, ServiceFactory
from tests.support.servers import Reply

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def counting_upstream(http_server_factory):
    """An upstream answering `n=<request number>` so a cached answer is recognisable."""
    counter = itertools.count(1)
    extra_headers: list[tuple[str, str]] = []

    def handler(request):
        return Reply(200, f"n={next(counter)} path={request.path}".encode(), headers=list(extra_headers))

    server = http_server_factory(handler)
    server.extra_headers = extra_headers
    return server


def _cached_route(upstream, **fields):
    fields.setdefault("cache_ttl_seconds", 60)
    fields.setdefault("auth_required", False)
    fields.setdefault("methods", ["GET", "POST"])
    return RouteFactory(path="/catalogue/**", service=ServiceFactory(targets=[upstream.url]), **fields)


def test_a_cached_route_answers_the_second_get_without_the_upstream(gw, counting_upstream):
    _cached_route(counting_upstream)

    first = gw.get("/gw/catalogue/items?page=1")
    second = gw.get("/gw/catalogue/items?page=1")

    assert first.status_code == second.status_code == 200
    assert first.content == second.content == b"n=1 path=/catalogue/items?page=1"
    assert len(counting_upstream.requests) == 1
    assert second["Age"] is not None
    assert list(get_redis_connection("default").scan_iter(match="responses:*"))


def test_the_query_string_is_part_of_the_key(gw, counting_upstream):
    _cached_route(counting_upstream)

    assert gw.get("/gw/catalogue/items?page=1").content.startswith(b"n=1")
    assert gw.get("/gw/catalogue/items?page=2").content.startswith(b"n=2")
    assert gw.get("/gw/catalogue/items?page=1").content.startswith(b"n=1")


def test_head_is_answered_from_the_cached_get_without_a_body(gw, counting_upstream):
    _cached_route(counting_upstream)
    gw.get("/gw/catalogue/items")

    head = gw.head("/gw/catalogue/items")

    assert head.status_code == 200 and head.content == b""
    assert len(counting_upstream.requests) == 1


def test_entries_expire_with_the_route_ttl(gw, counting_upstream):
    _cached_route(counting_upstream, cache_ttl_seconds=1)
    gw.get("/gw/catalogue/items")
    key = next(get_redis_connection("default").scan_iter(match="responses:*"))

    assert 0 < get_redis_connection("default").pttl(key) <= 1000


def test_routes_without_a_ttl_and_other_methods_are_not_cached(gw, counting_upstream):
    _cached_route(counting_upstream, cache_ttl_seconds=0)
    gw.get("/gw/catalogue/items")
    gw.get("/gw/catalogue/items")
    assert len(counting_upstream.requests) == 2


def test_post_is_never_cached(gw, counting_upstream):
    _cached_route(counting_upstream)
    gw.post("/gw/catalogue/items", b"{}", content_type="application/json")
    gw.post("/gw/catalogue/items", b"{}", content_type="application/json")
    assert len(counting_upstream.requests) == 2


@pytest.mark.parametrize(
    "headers",
    [
        [("Set-Cookie", "session=abc")],
        [("Cache-Control", "private, max-age=60")],
        [("Cache-Control", "no-store")],
        [("Vary", "*")],
    ],
)
def test_private_responses_are_not_cached(gw, counting_upstream, headers):
    _cached_route(counting_upstream)
    counting_upstream.extra_headers.extend(headers)

    gw.get("/gw/catalogue/items")
    again = gw.get("/gw/catalogue/items")

    assert again.content.startswith(b"n=2")


def test_bodies_above_the_limit_are_not_cached(gw_server, counting_upstream):
    gw = gw_server({"GATEWAY_RESPONSE_CACHE_MAX_BYTES": "10"})
    _cached_route(counting_upstream)

    gw.get("/gw/catalogue/items")
    assert gw.get("/gw/catalogue/items").content.startswith(b"n=2")


def test_a_route_edit_invalidates_its_cached_responses(gw, counting_upstream):
    route = _cached_route(counting_upstream)
    gw.get("/gw/catalogue/items")
    assert gw.get("/gw/catalogue/items").content.startswith(b"n=1")

    with freeze_time(route.updated_at.replace(year=route.updated_at.year + 1)):  # a later save
        route.timeout_ms = 4000
        route_save(route=route)
    gw.sync()  # the server sees the edit

    assert gw.get("/gw/catalogue/items").content.startswith(b"n=2")


def test_another_routes_entries_survive_an_edit(gw, counting_upstream):
    route = _cached_route(counting_upstream)
    other = RouteFactory(path="/prices/**", service=route.service, auth_required=False, cache_ttl_seconds=60)
    gw.get("/gw/prices/a")

    with freeze_time(other.updated_at.replace(year=other.updated_at.year + 1)):
        route.timeout_ms = 4000
        route_save(route=route)
    gw.sync()  # the server sees the edit

    assert gw.get("/gw/prices/a").content.startswith(b"n=1")


def test_flush_action_in_admin_drops_a_routes_entries(admin_client, gw, counting_upstream):
    route = _cached_route(counting_upstream)
    gw.get("/gw/catalogue/items")

    admin_client.post(
        "/admin/gateway/route/", {"action": "flush_response_cache", "_selected_action": [route.pk]}
    )

    assert gw.get("/gw/catalogue/items").content.startswith(b"n=2")


def _cache_get(**kwargs):  # noqa: ANN003, ANN201
    return _on_a_loop(response_cache_aget(**kwargs))


def _cache_set(**kwargs):  # noqa: ANN003, ANN201
    return _on_a_loop(response_cache_aset(**kwargs))


def _on_a_loop(coroutine):  # noqa: ANN001, ANN202
    """asyncio.run in a thread of its own: a browser test earlier in this worker may leave a loop."""
    with ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, coroutine).result()


def test_authenticated_routes_are_cached_per_user_and_tenant():
    RouteFactory(path="/me/**", methods=["GET"], auth_required=True, cache_ttl_seconds=60)
    route = route_resolve(method="GET", path="/me/profile").route
    alice = Identity(user_id="alice", tenant_id="t1")
    alice_other_tenant = Identity(user_id="alice", tenant_id="t2")
    bob = Identity(user_id="bob", tenant_id="t1")
    request = {"route": route, "path": "/me/profile", "query_string": "", "request_headers": []}

    _cache_set(
        method="GET",
        identity=alice,
        status=200,
        headers=[("Content-Type", "text/plain")],
        body=b"alice",
        **request,
    )

    hit = _cache_get(method="GET", identity=alice, **request)
    assert isinstance(hit, CachedResponse) and hit.body == b"alice" and hit.status == 200
    assert ("Content-Type", "text/plain") in hit.headers
    assert _cache_get(method="GET", identity=bob, **request) is None
    assert _cache_get(method="GET", identity=alice_other_tenant, **request) is None
    assert _cache_get(method="GET", identity=None, **request) is None


def test_only_200_responses_are_stored():
    RouteFactory(path="/public/**", methods=["GET"], auth_required=False, cache_ttl_seconds=60)
    route = route_resolve(method="GET", path="/public/x").route
    request = {
        "route": route,
        "method": "GET",
        "path": "/public/x",
        "query_string": "",
        "identity": None,
        "request_headers": [],
    }

    _cache_set(status=404, headers=[], body=b"missing", **request)
    assert _cache_get(**request) is None
    _cache_set(status=200, headers=[], body=b"found", **request)
    assert _cache_get(**request).body == b"found"


def test_redis_down_means_no_cache_not_an_error(gw_server, counting_upstream):
    from tests.support.servers import free_port

    gw = gw_server({"REDIS_URL": f"redis://127.0.0.1:{free_port()}/2"})  # a closed port
    _cached_route(counting_upstream)

    assert gw.get("/gw/catalogue/items").status_code == 200
    assert gw.get("/gw/catalogue/items").content.startswith(b"n=2")


def test_an_auth_route_caches_per_user_with_the_token_and_per_permission_set(
    gw_server, counting_upstream, token_service
):
    gw = gw_server(token_service.env)
    RouteFactory(
        path="/mine/**",
        methods=["GET"],
        auth_required=True,
        cache_ttl_seconds=60,
        service=ServiceFactory(targets=[counting_upstream.url]),
    )
    reader = token_service.auth_header(sub="u-1", tenant_id="t-1", permissions=["a.read"])
    same_user_again = token_service.auth_header(sub="u-1", tenant_id="t-1", permissions=["a.read"])
    more_rights = token_service.auth_header(sub="u-1", tenant_id="t-1", permissions=["a.read", "a.admin"])

    assert gw.get("/gw/mine/x", **reader).content.startswith(b"n=1")
    assert gw.get("/gw/mine/x", **same_user_again).content.startswith(b"n=1")  # another token
    assert gw.get("/gw/mine/x", **more_rights).content.startswith(b"n=2")
    assert gw.get("/gw/mine/x", HTTP_COOKIE="s=1", **reader).content.startswith(b"n=3")
