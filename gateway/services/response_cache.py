"""GET response cache for routes with `cache_ttl_seconds > 0` (SPEC §3 "Response cache").

Key: `responses:{route id}:{route version}:{digest of scope, path and query}`. The route version
changes whenever the route or its service is saved, so an edit makes every old entry unreachable
(tag invalidation without a scan); `response_cache_invalidate(route_id=…)` also deletes a route's
entries by SCAN, and `gateway_cache flush --kind responses` all of them. The scope is the user and
tenant for routes that require auth, `public` otherwise, so one user never sees another's
response. HEAD is answered from the GET entry (without the body); only GET responses are stored.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass

from django.conf import settings
from django.core.cache import cache
from django.db import transaction

from gateway.services.cache_stats import cache_hit, cache_miss
from gateway.services.shared_cache import shared_cache_call, shared_cache_delete_pattern
from gateway.types import Identity, ResolvedRoute

CACHEABLE_METHODS = frozenset({"GET", "HEAD"})
_UNCACHEABLE_DIRECTIVES = ("private", "no-store", "no-cache")
# Per-request or per-hop headers that must not be replayed from the cache.
_NOT_STORED = frozenset({"age", "x-correlation-id", "connection", "keep-alive", "transfer-encoding"})


@dataclass(frozen=True, slots=True)
class CachedResponse:
    status: int
    headers: list[tuple[str, str]]
    body: bytes


def response_cache_max_bytes() -> int:
    return int(getattr(settings, "GATEWAY_RESPONSE_CACHE_MAX_BYTES", 1024 * 1024))


def response_cache_applies(*, route: ResolvedRoute, method: str) -> bool:
    """Whether the view should look up / buffer for the cache at all (cheap; no I/O)."""
    return route.cache_ttl_seconds > 0 and method in CACHEABLE_METHODS


def _key(*, route: ResolvedRoute, path: str, query_string: str, identity: Identity | None) -> str | None:
    if route.auth_required:
        if identity is None:
            return None  # never share a response of an authenticated route
        scope = f"user:{identity.user_id}\ntenant:{identity.tenant_id}"
    else:
        scope = "public"
    digest = hashlib.sha256(f"{scope}\n{path}\n{query_string}".encode()).hexdigest()[:40]
    return f"responses:{route.id}:{route.version}:{digest}"


def response_cache_get(
    *,
    route: ResolvedRoute,
    method: str,
    path: str,
    query_string: str,
    identity: Identity | None,
) -> CachedResponse | None:
    """The stored response for this request, or None (not cacheable, miss, or Redis down)."""
    if not response_cache_applies(route=route, method=method):
        return None
    key = _key(route=route, path=path, query_string=query_string, identity=identity)
    if key is None:
        return None
    stored = shared_cache_call(lambda: cache.get(key), None)
    if not isinstance(stored, tuple) or len(stored) != 4:
        cache_miss("responses")
        return None
    cache_hit("responses")
    status, headers, body, stored_at = stored
    age = max(0, int(time.time() - stored_at))
    return CachedResponse(
        status=status,
        headers=[*headers, ("Age", str(age))],
        body=b"" if method == "HEAD" else body,
    )


def response_cacheable(*, status: int, headers: list[tuple[str, str]], body_size: int) -> bool:
    if status != 200 or body_size > response_cache_max_bytes():
        return False
    for name, value in headers:
        lower = name.lower()
        if lower == "set-cookie":
            return False
        if lower == "cache-control" and any(d in value.lower() for d in _UNCACHEABLE_DIRECTIVES):
            return False
        if lower == "vary" and value.strip() == "*":
            return False
    return True


def response_cache_set(
    *,
    route: ResolvedRoute,
    method: str,
    path: str,
    query_string: str,
    identity: Identity | None,
    status: int,
    headers: list[tuple[str, str]],
    body: bytes,
) -> None:
    """Store a GET response when it may be shared (200, no Set-Cookie, not private/no-store,
    within GATEWAY_RESPONSE_CACHE_MAX_BYTES); anything else is silently not stored."""
    if method != "GET" or not response_cache_applies(route=route, method=method):
        return
    if not response_cacheable(status=status, headers=headers, body_size=len(body)):
        return
    key = _key(route=route, path=path, query_string=query_string, identity=identity)
    if key is None:
        return
    kept = [(name, value) for name, value in headers if name.lower() not in _NOT_STORED]
    value = (status, kept, bytes(body), time.time())
    shared_cache_call(lambda: cache.set(key, value, route.cache_ttl_seconds), None)


def response_cache_invalidate(*, route_id: int | None = None) -> None:
    """After commit: delete the cached responses of one route (or of every route)."""
    pattern = "responses:*" if route_id is None else f"responses:{route_id}:*"
    transaction.on_commit(lambda: response_cache_delete_now(pattern=pattern), robust=True)


def response_cache_delete_now(*, pattern: str = "responses:*") -> int:
    return shared_cache_call(lambda: shared_cache_delete_pattern(pattern), 0)
