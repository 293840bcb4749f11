"""Every shared-cache value is JSON (`redis-cli GET` shows text, never a pickle), read back through
the real paths; a pickle planted at a key is a miss and never runs."""

from __future__ import annotations

import json
import pickle

import pytest
import redis
from django.conf import settings

from common.local_cache import reset_all_local_caches
from gateway.routing import route_resolve
from tests.gateway.factories import RouteFactory, ServiceFactory
from tests.gateway.proxy_support import proxy_route
from tests.support.servers import Reply

pytestmark = pytest.mark.django_db

_RAN: list[str] = []


def _ran(marker: str) -> None:
    _RAN.append(marker)


class _Boom:
    """Unpickling this calls `_ran`: the proof that code ran."""

    def __reduce__(self):  # noqa: ANN204
        return (_ran, ("unpickled!",))


def _raw() -> redis.Redis:
    return redis.Redis.from_url(settings.REDIS_URL)


def _json_values(pattern: str) -> dict[str, object]:
    client = _raw()
    keys = sorted(key.decode() for key in client.scan_iter(match=pattern))
    return {key: json.loads(client.get(key)) for key in keys}  # fails on anything but JSON


def _binary_upstream(http_server_factory):
    return http_server_factory(
        lambda request: Reply(
            200, b"\x00\xffbinary\x80", headers=[("Content-Type", "application/octet-stream")]
        )
    )


def test_route_entries_are_json_and_a_cold_process_reads_them_back():
    route = RouteFactory(path="/users/{user_id}", methods=["GET"], condition={"user_id": "{{X-User-ID}}"})
    first = route_resolve(method="GET", path="/users/7")
    with pytest.raises(Exception):  # noqa: B017  (405, shared too)
        route_resolve(method="POST", path="/users/7")

    values = _json_values("routes:*")
    assert set(values) == {"routes:/users/7:GET", "routes:/users/7:POST"}
    assert values["routes:/users/7:GET"]["match"]["route"]["id"] == route.id
    assert values["routes:/users/7:POST"]["miss"]["allowed"] == ["GET", "HEAD"]

    reset_all_local_caches()  # a fresh process: only Redis is shared
    again = route_resolve(method="GET", path="/users/7")
    assert again == first


def test_responses_are_json_with_the_body_base64_and_replayed_byte_for_byte(client, http_server_factory):
    upstream = _binary_upstream(http_server_factory)
    RouteFactory(
        path="/files/**",
        methods=["GET"],
        auth_required=False,
        cache_ttl_seconds=60,
        service=ServiceFactory(targets=[upstream.url]),
    )

    first = client.get("/gw/files/a.bin")
    second = client.get("/gw/files/a.bin")

    assert first.content == second.content == b"\x00\xffbinary\x80"
    assert len(upstream.requests) == 1
    (value,) = _json_values("responses:*").values()
    assert value["v"] == 1 and value["status"] == 200
    assert second["Content-Type"] == "application/octet-stream"


def test_idempotency_records_are_json_and_replayed_from_redis(client, http_server_factory):
    upstream = _binary_upstream(http_server_factory)
    proxy_route(upstream.url, path="/register", idempotency="required", methods=["POST"])

    first = client.post(
        "/gw/register", data=b"{}", content_type="application/json", HTTP_IDEMPOTENCY_KEY="k-1"
    )
    reset_all_local_caches()
    from_database = client.post(
        "/gw/register", data=b"{}", content_type="application/json", HTTP_IDEMPOTENCY_KEY="k-1"
    )  # fills Redis
    (value,) = _json_values("idempotency:*").values()
    reset_all_local_caches()
    from_redis = client.post(
        "/gw/register", data=b"{}", content_type="application/json", HTTP_IDEMPOTENCY_KEY="k-1"
    )

    assert value["v"] == 1 and value["response"]["status"] == 200
    assert first.content == from_database.content == from_redis.content == b"\x00\xffbinary\x80"
    assert from_redis["Idempotent-Replayed"] == "true"
    assert len(upstream.requests) == 1


def test_every_kind_in_redis_is_json_after_real_traffic(client, http_server_factory):
    upstream = _binary_upstream(http_server_factory)
    RouteFactory(
        path="/files/**",
        methods=["GET"],
        auth_required=False,
        cache_ttl_seconds=60,
        service=ServiceFactory(targets=[upstream.url]),
    )
    client.get("/gw/files/a.bin")
    client.get("/gw/nothing")

    client_raw = _raw()
    keys = [key for key in client_raw.scan_iter() if client_raw.type(key) == b"string"]
    assert any(key.startswith(b"responses:") for key in keys)
    assert any(key.startswith(b"routes:") for key in keys)
    for key in keys:
        json.loads(client_raw.get(key))


@pytest.mark.parametrize("kind", ["routes", "responses", "idempotency"])
def test_a_planted_pickle_is_a_miss_and_never_runs(kind, client, http_server_factory):
    upstream = http_server_factory(lambda request: Reply(200, b"fresh"))
    service = ServiceFactory(targets=[upstream.url])
    RouteFactory(
        path="/files/**", methods=["GET"], auth_required=False, cache_ttl_seconds=60, service=service
    )
    proxy_route(upstream.url, path="/register", idempotency="required", methods=["POST"])

    def request():
        if kind == "idempotency":
            return client.post(
                "/gw/register", data=b"{}", content_type="application/json", HTTP_IDEMPOTENCY_KEY="k-1"
            )
        return client.get("/gw/files/a.bin")

    request()
    keys = [key for key in _raw().scan_iter(match=f"{kind}:*")]
    if kind == "idempotency":
        reset_all_local_caches()
        request()  # the replay from the database fills Redis
        keys = list(_raw().scan_iter(match=f"{kind}:*"))
    assert keys
    for key in keys:
        _raw().set(key, pickle.dumps(_Boom()), ex=60)
    reset_all_local_caches()
    _RAN.clear()

    response = request()

    assert _RAN == []
    assert response.status_code == 200
    assert response.content == b"fresh"
