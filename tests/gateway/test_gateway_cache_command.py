"""`manage.py gateway_cache stats|flush [--kind …]`."""

from __future__ import annotations

import copy
import io

import pytest
from django.core.cache import cache
from django.core.management import call_command
from django.core.management.base import CommandError
from django_redis import get_redis_connection

from common.local_cache import reset_all_local_caches
from gateway.routing import route_resolve
from gateway.services.cache_stats import cache_stats_reset
from tests.gateway.factories import RouteFactory
from tests.support.servers import free_port

pytestmark = pytest.mark.django_db


def _run(*args: str) -> str:
    out = io.StringIO()
    call_command("gateway_cache", *args, stdout=out)
    return out.getvalue()


def _row(output: str, kind: str) -> list[str]:
    for line in output.splitlines():
        if line.split() and line.split()[0] == kind:
            return line.split()
    raise AssertionError(f"no {kind} row in {output}")


def test_stats_count_hits_misses_and_keys_by_kind():
    cache_stats_reset()  # counts of this process from earlier tests
    RouteFactory(path="/users/{user_id}", methods=["GET"])
    route_resolve(method="GET", path="/users/1")  # miss (computed), then stored
    route_resolve(method="GET", path="/users/1")  # hit (local layer)
    reset_all_local_caches()
    route_resolve(method="GET", path="/users/1")  # hit (Redis)
    route_resolve(method="GET", path="/users/2")  # miss
    cache.set("rbac:u1:t1", {"permissions": []}, 60)
    cache.set("rbac:u2:t1", {"permissions": []}, 60)

    output = _run("stats")

    assert _row(output, "routes")[1:] == ["2", "2", "50.0%", "2"]
    assert _row(output, "rbac")[-1] == "2"
    assert _row(output, "jwks")[1:] == ["0", "0", "-", "0"]


def test_flush_one_kind_leaves_the_others():
    RouteFactory(path="/users/{user_id}", methods=["GET"])
    route_resolve(method="GET", path="/users/1")
    route_resolve(method="GET", path="/users/2")
    cache.set("rbac:u1:t1", {"permissions": []}, 60)
    cache.set("revoked:j1", "true", 60)

    output = _run("flush", "--kind", "routes")

    assert "flushed routes: 2 key(s)" in output
    client = get_redis_connection("default")
    assert not list(client.scan_iter(match="routes:*"))
    assert client.exists("rbac:u1:t1") and client.exists("revoked:j1")
    assert route_resolve(method="GET", path="/users/1").params == {"user_id": "1"}  # still routes


def test_flush_everything():
    cache.set("rbac:u1:t1", {"permissions": []}, 60)
    cache.set("revoked:j1", "true", 60)
    cache.set("responses:1:1:abc", {"v": 1, "status": 200, "headers": [], "body": "eA==", "stored_at": 0}, 60)
    cache.set("unrelated", "kept", 60)

    output = _run("flush")

    assert "flushed 3 key(s) in total" in output
    assert get_redis_connection("default").exists("unrelated")


def test_flush_deletes_in_batches_past_one_scan_page():
    client = get_redis_connection("default")
    client.mset({f"responses:9:9:{n}": b"x" for n in range(1200)})

    assert "flushed responses: 1200 key(s)" in _run("flush", "--kind", "responses")
    assert not list(client.scan_iter(match="responses:*"))


def test_unknown_kind_is_refused():
    with pytest.raises(CommandError):
        _run("flush", "--kind", "sessions")


def test_redis_unreachable_is_a_clear_failure(settings):
    caches = copy.deepcopy(settings.CACHES)
    caches["default"]["LOCATION"] = f"redis://127.0.0.1:{free_port()}/2"
    settings.CACHES = caches

    with pytest.raises(CommandError, match="cache unavailable"):
        _run("stats")
