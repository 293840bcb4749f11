"""GET response cache for routes with `cache_ttl_seconds > 0` (SPEC §3 "Response cache").

Key: `responses:{route id}:{route version}:{digest of scope, path and query}`. The route version
changes whenever the route or its service is saved, so an edit makes every old entry unreachable
(tag invalidation without a scan); `response_cache_invalidate(route_id=…)` also deletes a route's
entries by SCAN, and `gateway_cache flush --kind responses` all of them. The scope is the user and
tenant (and permissions) for routes that require auth, `public` otherwise, so one user never sees
another's response. HEAD is answered from the GET entry (without the body); only GET responses are
stored. What may be served and stored is decided by `gateway.services.cache_rules` (RFC 9111: no
Cookie, Authorization only with an explicitly shareable answer on public routes, no private /
no-store / Set-Cookie). A response with `Vary` leaves a marker `("vary", names)` at the key and is
stored at `{key}:{digest of the request's values for those names}`. Values are JSON
(`_encode` / `_decode`, the body base64, format version `gateway.caching.codecs.FORMAT`); anything
else found at a key (an old pickle, garbage) is a miss.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass

from django.conf import settings
from django.core.cache import cache
from django.db import transaction

from gateway.caching.codecs import bytes_decode, bytes_encode, is_current, versioned
from gateway.services.cache_rules import (
    HeaderPairs,
    cache_lookup_allowed,
    response_storable,
    vary_digest,
    vary_names,
)
from gateway.services.cache_stats import cache_hit, cache_miss
from gateway.services.shared_cache import shared_cache_call, shared_cache_delete_pattern
from gateway.types import Identity, ResolvedRoute

CACHEABLE_METHODS = frozenset({"GET", "HEAD"})
# Per-request or per-hop headers that must not be replayed from the cache.
_NOT_STORED = frozenset({"age", "x-correlation-id", "connection", "keep-alive", "transfer-encoding"})
_VARY_MARKER = "vary"


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
        # Permissions too: what the upstream shows depends on X-User-Permissions.
        scope = (
            f"user:{identity.user_id}\ntenant:{identity.tenant_id}\n"
            f"permissions:{','.join(sorted(identity.permissions))}"
        )
    else:
        scope = "public"
    digest = hashlib.sha256(f"{scope}\n{path}\n{query_string}".encode()).hexdigest()[:40]
    return f"responses:{route.id}:{route.version}:{digest}"


def _lookup_key(
    *,
    route: ResolvedRoute,
    method: str,
    path: str,
    query_string: str,
    identity: Identity | None,
    request_headers: list[tuple[str, str]],
) -> str | None:
    """The key to look up for this request, or None when it must not be served from the cache."""
    if not response_cache_applies(route=route, method=method):
        return None
    if not cache_lookup_allowed(request_headers=request_headers, shared=not route.auth_required):
        return None
    return _key(route=route, path=path, query_string=query_string, identity=identity)


def _variant_key(key: str, stored: tuple | None, request_headers: list[tuple[str, str]]) -> str | None:
    """Where the variant for this request lives when `stored` is a Vary marker, else None."""
    if isinstance(stored, tuple) and len(stored) == 2 and stored[0] == _VARY_MARKER:
        return f"{key}:{vary_digest(request_headers=request_headers, names=tuple(stored[1]))}"
    return None


def _answer(stored: tuple | None, method: str) -> CachedResponse | None:
    """A decoded entry as the answer (with its Age), counted as a hit; anything else a miss."""
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


def _entries(
    *,
    route: ResolvedRoute,
    method: str,
    path: str,
    query_string: str,
    identity: Identity | None,
    request_headers: list[tuple[str, str]],
    status: int,
    headers: list[tuple[str, str]],
    body: bytes,
) -> dict[str, tuple] | None:
    """What to store for this answer (key → entry, before `_encode`), or None when
    `cache_rules.response_storable` does not allow it (RFC 9111 §3, §3.5, Vary as a secondary key)."""
    if method != "GET" or not response_cache_applies(route=route, method=method):
        return None
    if not response_storable(
        request_headers=request_headers,
        shared=not route.auth_required,
        status=status,
        response_headers=headers,
        body_size=len(body),
        max_bytes=response_cache_max_bytes(),
    ):
        return None
    key = _key(route=route, path=path, query_string=query_string, identity=identity)
    if key is None:
        return None
    names = vary_names(response_headers=headers) or ()
    kept = [(name, value) for name, value in headers if name.lower() not in _NOT_STORED]
    value = (status, kept, bytes(body), time.time())
    if not names:
        return {key: value}
    # The primary key says which request headers select the variant; each variant has its own.
    variant = f"{key}:{vary_digest(request_headers=request_headers, names=names)}"
    return {variant: value, key: (_VARY_MARKER, names)}


def _encode(value: tuple) -> dict:
    """A stored response `(status, headers, body, stored_at)` or a Vary marker `("vary", names)`
    as a JSON object."""
    if value[0] == _VARY_MARKER:
        return versioned({"vary": list(value[1])})
    status, headers, body, stored_at = value
    return versioned(
        {
            "status": status,
            "headers": [[name, header_value] for name, header_value in headers],
            "body": bytes_encode(body),
            "stored_at": stored_at,
        }
    )


def _decode(raw: object) -> tuple | None:
    """`_encode`'s tuple back, or None for anything not written in the current format."""
    if not is_current(raw):
        return None
    assert isinstance(raw, dict)
    try:
        if "vary" in raw:
            return (_VARY_MARKER, tuple(str(name) for name in raw["vary"]))
        headers = [(str(name), str(header_value)) for name, header_value in raw["headers"]]
        return (int(raw["status"]), headers, bytes_decode(raw["body"]), float(raw["stored_at"]))
    except (KeyError, TypeError, ValueError):
        return None


def response_cache_invalidate(*, route_id: int | None = None) -> None:
    """After commit: delete the cached responses of one route (or of every route)."""
    pattern = "responses:*" if route_id is None else f"responses:{route_id}:*"
    transaction.on_commit(lambda: response_cache_delete_now(pattern=pattern), robust=True)


def response_cache_delete_now(*, pattern: str = "responses:*") -> int:
    return shared_cache_call(lambda: shared_cache_delete_pattern(pattern), 0)


# --- reads and writes (the asyncio pipeline) --------------------------------------------------
# Redis through `redis.asyncio` (one client per loop, gateway.caching.two_level), values encoded
# by `_encode` / `_decode` and the cache backend's own serializer (`_aencode` / `_adecode`), so an
# entry is what `django.core.cache` would store (`gateway_cache` and the admin read and delete the
# same keys). Without Redis the cache is this process's memory: the sync calls are then plain dict
# operations, safe on the loop.


def _aencode(value: tuple) -> bytes:
    return cache.client.encode(_encode(value))  # type: ignore[attr-defined]


def _adecode(raw: bytes | None) -> tuple | None:
    return None if raw is None else _decode(cache.client.decode(raw))  # type: ignore[attr-defined]


async def _aget(key: str) -> tuple | None:
    from gateway.caching.two_level import _async_client
    from gateway.services.shared_cache import (
        shared_cache_available,
        shared_cache_failed,
        shared_cache_is_redis,
        shared_cache_succeeded,
    )

    if not shared_cache_is_redis():
        return _decode(shared_cache_call(lambda: cache.get(key), None))
    if not shared_cache_available():
        return None
    try:
        raw = await _async_client().get(cache.make_key(key))
        value = _adecode(raw)
    except Exception as exc:  # redis.asyncio errors and timeouts, an unreadable value
        shared_cache_failed(exc)
        return None
    shared_cache_succeeded()
    return value


async def _aset_many(entries: dict[str, tuple], ttl: int) -> None:
    from gateway.caching.two_level import _async_client
    from gateway.services.shared_cache import (
        shared_cache_available,
        shared_cache_failed,
        shared_cache_is_redis,
        shared_cache_succeeded,
    )

    if not shared_cache_is_redis():
        encoded = {key: _encode(value) for key, value in entries.items()}
        shared_cache_call(lambda: cache.set_many(encoded, ttl), None)
        return
    if not shared_cache_available():
        return
    try:
        async with _async_client().pipeline(transaction=False) as pipe:
            for key, value in entries.items():
                pipe.set(cache.make_key(key), _aencode(value), ex=max(1, int(ttl)))
            await pipe.execute()
    except Exception as exc:
        shared_cache_failed(exc)
        return
    shared_cache_succeeded()


async def response_cache_aget(
    *,
    route: ResolvedRoute,
    method: str,
    path: str,
    query_string: str,
    identity: Identity | None,
    request_headers: HeaderPairs,
) -> CachedResponse | None:
    """The stored response for this request, or None (not cacheable, miss, or Redis down).

    `request_headers`: the client's request headers as (name, value) pairs (for Cookie,
    Authorization, Cache-Control and the headers a stored response varies on).
    """
    request_headers = list(request_headers)
    key = _lookup_key(
        route=route,
        method=method,
        path=path,
        query_string=query_string,
        identity=identity,
        request_headers=request_headers,
    )
    if key is None:
        return None
    stored = await _aget(key)
    variant = _variant_key(key, stored, request_headers)
    if variant is not None:
        stored = await _aget(variant)
    return _answer(stored, method)


async def response_cache_aset(
    *,
    route: ResolvedRoute,
    method: str,
    path: str,
    query_string: str,
    identity: Identity | None,
    request_headers: HeaderPairs,
    status: int,
    headers: list[tuple[str, str]],
    body: bytes,
) -> None:
    """Store a GET response when the cache rules allow it; anything else is silently not stored."""
    entries = _entries(
        route=route,
        method=method,
        path=path,
        query_string=query_string,
        identity=identity,
        request_headers=list(request_headers),
        status=status,
        headers=headers,
        body=body,
    )
    if entries:
        await _aset_many(entries, route.cache_ttl_seconds)
