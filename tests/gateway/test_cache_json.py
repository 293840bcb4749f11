"""Every shared-cache value is JSON (`redis-cli GET` shows text, never a pickle), read back through
the real paths; a pickle planted at a key is a miss and never runs in the serving process.

The proxying tests go through the production server (`gw`; `gw_fresh` for a process that just
started, whose local layers are empty). The planted pickle would create a file if the server
unpickled it, so "never runs" is observed from outside: the file is not there.
"""

from __future__ import annotations

import json
import pathlib
import pickle
import time
import uuid

import pytest
import redis
from django.conf import settings

from common.local_cache import reset_all_local_caches
from gateway.routing import route_resolve
from gateway.services.invalidation import invalidation_publish
from tests.gateway.factories import RouteFactory, ServiceFactory
from tests.gateway.proxy_support import proxy_route
from tests.support.servers import Reply

pytestmark = pytest.mark.django_db(transaction=True)


class _Touch:
    """Unpickling this creates the file at `path` (pathlib is importable in any process): the
    proof that code ran."""

    def __init__(self, path: pathlib.Path) -> None:
        self.path = path

    def __reduce__(self):  # noqa: ANN204
        return (pathlib.Path.touch, (pathlib.Path(self.path),))


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


def test_responses_are_json_with_the_body_base64_and_replayed_byte_for_byte(gw, http_server_factory):
    upstream = _binary_upstream(http_server_factory)
    RouteFactory(
        path="/files/**",
        methods=["GET"],
        auth_required=False,
        cache_ttl_seconds=60,
        service=ServiceFactory(targets=[upstream.url]),
    )

    first = gw.get("/gw/files/a.bin")
    second = gw.get("/gw/files/a.bin")

    assert first.content == second.content == b"\x00\xffbinary\x80"
    assert len(upstream.requests) == 1
    (value,) = _json_values("responses:*").values()
    assert value["v"] == 1 and value["status"] == 200
    assert second["Content-Type"] == "application/octet-stream"


def _register(client, key: str):  # noqa: ANN001, ANN202
    return client.post(
        "/gw/register", data=b"{}", content_type="application/json", HTTP_IDEMPOTENCY_KEY=key
    )


def _new_key() -> str:
    """A key no earlier test used: the session's server keeps completed records in its local
    layer across tests (the database is emptied between them, that memory is not)."""
    return f"k-{uuid.uuid4().hex}"


def test_idempotency_records_are_json_and_replayed_from_redis(gw, gw_fresh, http_server_factory):
    upstream = _binary_upstream(http_server_factory)
    proxy_route(upstream.url, path="/register", idempotency="required", methods=["POST"])

    key = _new_key()
    first = _register(gw, key)
    from_database = _register(gw_fresh(), key)  # a process that never saw the key: fills Redis
    (value,) = _json_values("idempotency:*").values()
    from_redis = _register(gw_fresh(), key)  # another one: its local layer is empty, Redis has it

    assert value["v"] == 1 and value["response"]["status"] == 200
    assert first.content == from_database.content == from_redis.content == b"\x00\xffbinary\x80"
    assert from_redis["Idempotent-Replayed"] == "true"
    assert len(upstream.requests) == 1


def test_every_kind_in_redis_is_json_after_real_traffic(gw, http_server_factory):
    upstream = _binary_upstream(http_server_factory)
    RouteFactory(
        path="/files/**",
        methods=["GET"],
        auth_required=False,
        cache_ttl_seconds=60,
        service=ServiceFactory(targets=[upstream.url]),
    )
    gw.get("/gw/files/a.bin")
    gw.get("/gw/nothing")

    client_raw = _raw()
    keys = [key for key in client_raw.scan_iter() if client_raw.type(key) == b"string"]
    assert any(key.startswith(b"responses:") for key in keys)
    assert any(key.startswith(b"routes:") for key in keys)
    for key in keys:
        json.loads(client_raw.get(key))


def test_the_planted_payload_runs_when_unpickled(tmp_path):
    """The control for the test below: the payload is live (unpickling it creates its file)."""
    marker = tmp_path / "ran"
    pickle.loads(pickle.dumps(_Touch(marker)))  # noqa: S301  (our own payload, on purpose)
    assert marker.exists()


@pytest.mark.parametrize("kind", ["routes", "responses", "idempotency"])
def test_a_planted_pickle_is_a_miss_and_never_runs(kind, gw, gw_fresh, http_server_factory, tmp_path):
    upstream = http_server_factory(lambda request: Reply(200, b"fresh"))
    service = ServiceFactory(targets=[upstream.url])
    RouteFactory(
        path="/files/**", methods=["GET"], auth_required=False, cache_ttl_seconds=60, service=service
    )
    proxy_route(upstream.url, path="/register", idempotency="required", methods=["POST"])
    key = _new_key()

    def request(client=gw):  # noqa: ANN001, ANN202
        if kind == "idempotency":
            return _register(client, key)
        return client.get("/gw/files/a.bin")

    request()
    if kind == "idempotency":
        request(gw_fresh())  # the replay from the database fills Redis
    keys = [name for name in _raw().scan_iter(match=f"{kind}:*") if b"gatehouse-sync-probe" not in name]
    assert keys
    marker = tmp_path / "ran"
    for name in keys:
        _raw().set(name, pickle.dumps(_Touch(marker)), ex=60)

    if kind == "routes":
        # The server drops its route table and matches (as after any "routes" message) and reads
        # Redis again; the message travels by pub/sub, so ask until its entry was rewritten.
        invalidation_publish(kind="routes", payload={})
        deadline = time.monotonic() + 10
        while True:
            response = request()
            assert response.status_code == 200 and response.content == b"fresh"
            if all(_raw().get(name)[:1] == b"{" for name in keys) or time.monotonic() > deadline:
                break
            time.sleep(0.05)
    elif kind == "idempotency":
        response = request(gw_fresh())  # empty local layer: Redis first, then the database
    else:
        response = request()  # the response cache has no local layer

    assert not marker.exists()
    assert response.status_code == 200
    assert response.content == b"fresh"
    for name in keys:  # the miss was answered and stored again, as JSON
        json.loads(_raw().get(name))
    if kind == "responses":
        assert len(upstream.requests) == 2  # the pickle was a miss: the upstream was asked again
    else:
        assert len(upstream.requests) == 1
