"""Access to the shared cache (Redis) that never stalls the request path when Redis is down.

Every cache call on a hot path goes through `shared_cache_call`: the first failure opens a short
breaker (`_RETRY_AFTER_SECONDS`) during which calls return their default at once instead of paying
the socket timeout again; the outage and the recovery are each logged once, not per request.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator
from typing import TypeVar

from django.conf import settings
from django.core.cache import cache

from common.local_cache import LocalTTLCache

logger = logging.getLogger("gatehouse.cache")

T = TypeVar("T")
_RETRY_AFTER_SECONDS = 3.0
_lock = threading.Lock()
# The breaker lives in a LocalTTLCache so it expires by itself and is reset between tests.
_breaker = LocalTTLCache("shared-cache-breaker", ttl_seconds=_RETRY_AFTER_SECONDS, max_entries=1)
# "We said Redis is down" (until it answers again): one log line per outage, not per request.
_announced = LocalTTLCache("shared-cache-announced", ttl_seconds=10 * 365 * 86400, max_entries=1)


def plain_cache_key(key: str, key_prefix: str, version: int) -> str:
    """Django cache KEY_FUNCTION: store keys exactly as the SPEC names them (`routes:/a:GET`)."""
    return f"{key_prefix}{key}" if key_prefix else key


def shared_cache_is_redis() -> bool:
    return bool(settings.REDIS_URL)


def shared_cache_available() -> bool:
    """False while the breaker is open after a recent Redis failure."""
    return _breaker.get("open") is None


def shared_cache_failed(exc: BaseException) -> None:
    _breaker.set("open", True)
    with _lock:
        if _announced.get("down") is None:
            _announced.set("down", True)
            logger.warning("shared cache unavailable, serving without it: %s: %s", type(exc).__name__, exc)


def shared_cache_succeeded() -> None:
    if _announced.get("down") is not None:
        with _lock:
            if _announced.get("down") is not None:
                _announced.delete("down")
                logger.warning("shared cache available again")


def shared_cache_call(operation: Callable[[], T], default: T) -> T:
    """Run `operation` against the shared cache; on failure (or breaker open) return `default`."""
    if _breaker.get("open") is not None:
        return default
    try:
        result = operation()
    except Exception as exc:  # django-redis raises ConnectionInterrupted, redis-py its own errors
        shared_cache_failed(exc)
        return default
    shared_cache_succeeded()
    return result


def shared_cache_scan(pattern: str, *, count: int = 1000) -> Iterator[str]:
    """Keys matching `pattern`, by SCAN (never KEYS). Raises if Redis is unreachable."""
    if shared_cache_is_redis():
        from django_redis import get_redis_connection

        client = get_redis_connection("default")
        for key in client.scan_iter(match=pattern, count=count):
            yield key.decode() if isinstance(key, bytes) else key
        return
    # Embedded mode: the local-memory cache of this process only.
    import fnmatch

    store = getattr(cache, "_cache", {})
    for key in list(store.keys()):
        if fnmatch.fnmatchcase(key, pattern) and cache.get(key) is not None:
            yield key


def shared_cache_delete_pattern(pattern: str, *, batch: int = 500) -> int:
    """Delete every key matching `pattern` (SCAN + DEL in batches); returns how many."""
    deleted = 0
    pending: list[str] = []
    for key in shared_cache_scan(pattern):
        pending.append(key)
        if len(pending) >= batch:
            deleted += _delete_keys(pending)
            pending = []
    if pending:
        deleted += _delete_keys(pending)
    return deleted


def _delete_keys(keys: list[str]) -> int:
    if shared_cache_is_redis():
        from django_redis import get_redis_connection

        return int(get_redis_connection("default").delete(*keys))
    for key in keys:
        cache.delete(key)
    return len(keys)


def redis_db_number() -> int:
    """The Redis database of REDIS_URL (pub/sub channels are global, so names carry it)."""
    from redis.connection import parse_url

    try:
        return int(parse_url(settings.REDIS_URL).get("db", 0) or 0)
    except (ValueError, TypeError):
        return 0
