"""The gateway's two-level caches, each subscribed to the invalidation bus in AppConfig.ready()."""

from __future__ import annotations

from gateway.caching.two_level import TwoLevelCache

_caches: dict[str, TwoLevelCache] = {}


def cache_register(cache: TwoLevelCache) -> TwoLevelCache:
    """Register `cache` under its kind (one cache per kind); returns it."""
    existing = _caches.get(cache.kind)
    if existing is not None and existing is not cache:
        raise ValueError(f"a cache of kind {cache.kind!r} is already registered")
    _caches[cache.kind] = cache
    return cache


def cache_get(kind: str) -> TwoLevelCache | None:
    return _caches.get(kind)


def caches_subscribe() -> None:
    """Subscribe every registered cache to its kind (no listener thread started here)."""
    from gateway.services.invalidation import invalidation_subscribe

    for cache in _caches.values():
        invalidation_subscribe(cache.kind, cache.handle, start_listener=False)
