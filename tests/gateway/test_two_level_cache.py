"""TwoLevelCache: JSON in Redis (never pickle), async reads sharing the local layer, the breaker."""

from __future__ import annotations

import asyncio
import json
import pickle
import time

import pytest
import redis
from django.conf import settings

from common.local_cache import reset_all_local_caches
from gateway.caching.two_level import TwoLevelCache
from gateway.services.shared_cache import shared_cache_failed
from tests.support.servers import free_port

pytestmark = pytest.mark.django_db


def _run(coroutine):  # noqa: ANN001, ANN202
    """asyncio.run in a thread of its own: a browser test earlier in this worker may leave a loop."""
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, coroutine).result()


def _raw() -> redis.Redis:
    return redis.Redis.from_url(settings.REDIS_URL)


def test_gateway_keys_are_json_in_redis(token_service, rbac_resolver, django_capture_on_commit_callbacks):
    from django.core.management import call_command

    from gateway.services.auth import request_identity  # noqa: F401  (the pipeline's import path)
    from gateway.services.rbac import rbac_permissions
    from gateway.services.tokens import token_authenticate

    rbac_resolver.set("u-json", "t1", ["a"])
    rbac_permissions(user_id="u-json", tenant_id="t1")
    token_authenticate(authorization=token_service.bearer(jti="jti-json"))  # jwks + revoked "false"
    with django_capture_on_commit_callbacks(execute=True):
        call_command("revoke_token", "jti-json2")
    for key in ("rbac:u-json:t1", "jwks:public_key", "revoked:jti-json", "revoked:jti-json2"):
        raw = _raw().get(key)
        assert raw is not None, key
        json.loads(raw)  # text JSON, readable with redis-cli
    assert json.loads(_raw().get("revoked:jti-json2")) is True
    assert json.loads(_raw().get("rbac:u-json:t1"))["permissions"] == ["a"]


def test_a_pickle_planted_in_redis_is_never_unpickled():
    class Boom:
        def __reduce__(self):  # noqa: ANN204
            return (exec, ("raise SystemExit('unpickled!')",))

    cache = TwoLevelCache("rbac-test", shared_ttl_seconds=60, local_ttl_seconds=1)
    _raw().set("rbac-test:x", pickle.dumps(Boom()))
    assert cache.get("rbac-test:x") is None  # a miss, and nothing ran


def test_aget_reads_redis_asynchronously_and_shares_the_local_layer():
    cache = TwoLevelCache("async-test", shared_ttl_seconds=60, local_ttl_seconds=30)
    _raw().set("async-test:k", json.dumps({"v": 1}))

    async def main() -> tuple:
        first = await cache.aget("async-test:k")
        _raw().set("async-test:k", json.dumps({"v": 2}))
        second = await cache.aget("async-test:k")  # local layer
        await cache.aset("async-test:other", [1, 2])
        return first, second

    first, second = _run(main())
    assert first == {"v": 1} and second == {"v": 1}
    assert cache.get("async-test:k") == {"v": 1}  # the sync read sees the same local entry
    assert json.loads(_raw().get("async-test:other")) == [1, 2]


def test_redis_down_costs_no_per_request_timeout(settings):
    settings.REDIS_URL = f"redis://127.0.0.1:{free_port()}/0"
    settings.CACHES = {"default": {**settings.CACHES["default"], "LOCATION": settings.REDIS_URL}}
    reset_all_local_caches()
    cache = TwoLevelCache("down-test", shared_ttl_seconds=60, local_ttl_seconds=1)
    shared_cache_failed(ConnectionError("down"))  # the breaker is open
    started = time.monotonic()
    for n in range(200):
        assert cache.get(f"down-test:{n}") is None
    assert _run(cache.aget("down-test:a")) is None
    assert time.monotonic() - started < 0.5


def test_the_django_cache_refuses_a_planted_pickle_of_a_code_running_class():
    from django.core.cache import cache

    class Boom:
        def __reduce__(self):  # noqa: ANN204
            return (exec, ("raise SystemExit('unpickled!')",))

    _raw().set("responses:planted", pickle.dumps(Boom()))
    assert cache.get("responses:planted") is None  # a miss; exec never resolved


def test_the_django_cache_writes_json_text():
    from django.core.cache import cache

    cache.set("routes:/a:GET", {"v": 1, "miss": {"allowed": ["GET"]}}, 30)
    assert json.loads(_raw().get("routes:/a:GET")) == {"v": 1, "miss": {"allowed": ["GET"]}}
    assert cache.get("routes:/a:GET") == {"v": 1, "miss": {"allowed": ["GET"]}}
