"""`TwoLevelCache`: a per-process local layer in front of Redis, values stored as JSON.

One class for every gateway cache kind (rbac, revoked, jwks; routes can adopt it): keys are the
SPEC's (`rbac:{user}:{tenant}`), Redis values are JSON text written and read with a raw redis-py
client (never pickle; `redis-cli GET` shows the JSON), local entries are the decoded values.

- Sync (`get`, `set`, `add`, `delete`) for Django views, commands and Celery; async (`aget`,
  `aset`) through `redis.asyncio`, sharing the same local layer, for the asyncio pipeline.
- Without REDIS_URL there is no shared layer (a local-memory cache is per process and would hide
  other processes' changes): reads fall through to the caller's source of truth.
- Redis down: the breaker of `gateway.services.shared_cache` (shared by sync and async) skips Redis
  for 3 s after a failure, so a dead Redis costs no per-request timeout.
- Invalidation: `publish(payload)` runs the handlers of this process now and tells every other
  process (Redis pub/sub, or the database leg in embedded mode); registered caches are subscribed
  in `GatewayConfig.ready()`.
"""

from __future__ import annotations

import asyncio
import json
import logging
import weakref
from collections.abc import Callable
from typing import Any

from django.conf import settings

from common.local_cache import LocalTTLCache
from gateway.services.shared_cache import (
    shared_cache_available,
    shared_cache_call,
    shared_cache_failed,
    shared_cache_succeeded,
)

logger = logging.getLogger("gatehouse.cache")

Decoder = Callable[[str, Any], Any]  # (key, parsed JSON) -> value, or None when unusable
Encoder = Callable[[Any], Any]  # value -> JSON-safe
Handler = Callable[["TwoLevelCache", dict], None]

_ASYNC_TIMEOUT_SECONDS = 0.25
_async_clients: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _identity_decode(key: str, raw: Any) -> Any:
    return raw


def _identity_encode(value: Any) -> Any:
    return value


def _sync_client() -> Any:
    from django_redis import get_redis_connection

    return get_redis_connection("default")


def _async_client() -> Any:
    """One `redis.asyncio` client per event loop (a client is bound to the loop it first ran on)."""
    import redis.asyncio

    loop = asyncio.get_running_loop()
    client = _async_clients.get(loop)
    if client is None:
        client = redis.asyncio.Redis.from_url(
            settings.REDIS_URL,
            socket_connect_timeout=_ASYNC_TIMEOUT_SECONDS,
            socket_timeout=_ASYNC_TIMEOUT_SECONDS,
        )
        _async_clients[loop] = client
    return client


def json_loads_or_none(data: Any) -> Any:
    """JSON from Redis, or None for anything else (an old pickle, garbage): never unpickled."""
    if data is None:
        return None
    try:
        return json.loads(data)
    except (TypeError, ValueError, UnicodeDecodeError):
        return None


class TwoLevelCache:
    def __init__(
        self,
        kind: str,
        *,
        shared_ttl_seconds: int,
        local_ttl_seconds: float,
        max_local_entries: int = 10_000,
        decode: Decoder = _identity_decode,
        encode: Encoder = _identity_encode,
        on_invalidate: Handler | None = None,
    ) -> None:
        self.kind = kind
        self.shared_ttl_seconds = shared_ttl_seconds
        self.local = LocalTTLCache(kind, ttl_seconds=local_ttl_seconds, max_entries=max_local_entries)
        self._decode = decode
        self._encode = encode
        self._on_invalidate = on_invalidate

    # --- shared layer (Redis, JSON) ---------------------------------------------------------
    @staticmethod
    def shared_enabled() -> bool:
        return bool(settings.REDIS_URL)

    @staticmethod
    def redis_key(key: str) -> str:
        from django.core.cache import cache

        return cache.make_key(key)

    def shared_get(self, key: str) -> Any:
        """The decoded shared value, or None (miss, unusable value, no Redis, Redis down)."""
        if not self.shared_enabled():
            return None
        raw = shared_cache_call(lambda: _sync_client().get(self.redis_key(key)), None)
        return self._decode_raw(key, raw)

    async def ashared_get(self, key: str) -> Any:
        if not self.shared_enabled() or not shared_cache_available():
            return None
        try:
            raw = await _async_client().get(self.redis_key(key))
        except Exception as exc:  # redis.asyncio errors, timeouts
            shared_cache_failed(exc)
            return None
        shared_cache_succeeded()
        return self._decode_raw(key, raw)

    def _decode_raw(self, key: str, raw: Any) -> Any:
        parsed = json_loads_or_none(raw)
        return None if parsed is None else self._decode(key, parsed)

    def _dump(self, value: Any) -> str:
        return json.dumps(self._encode(value), separators=(",", ":"), sort_keys=True)

    def shared_set(self, key: str, value: Any, *, ttl: int | None = None, direct: bool = False) -> bool:
        """Write the shared value; False when not written. `direct` bypasses the breaker and
        raises on failure (a revoker must know)."""
        if not self.shared_enabled():
            return False
        data, seconds = self._dump(value), max(1, int(ttl or self.shared_ttl_seconds))
        if direct:
            try:
                _sync_client().set(self.redis_key(key), data, ex=seconds)
            except Exception as exc:
                shared_cache_failed(exc)
                raise
            shared_cache_succeeded()
            return True
        return bool(
            shared_cache_call(lambda: _sync_client().set(self.redis_key(key), data, ex=seconds), False)
        )

    async def ashared_set(self, key: str, value: Any, *, ttl: int | None = None) -> bool:
        if not self.shared_enabled() or not shared_cache_available():
            return False
        data, seconds = self._dump(value), max(1, int(ttl or self.shared_ttl_seconds))
        try:
            await _async_client().set(self.redis_key(key), data, ex=seconds)
        except Exception as exc:
            shared_cache_failed(exc)
            return False
        shared_cache_succeeded()
        return True

    def shared_add(self, key: str, value: Any, *, ttl: int | None = None) -> bool | None:
        """SET NX: True if written, False if a value was there, None when Redis is not usable."""
        if not self.shared_enabled():
            return None
        data, seconds = self._dump(value), max(1, int(ttl or self.shared_ttl_seconds))
        result = shared_cache_call(
            lambda: bool(_sync_client().set(self.redis_key(key), data, ex=seconds, nx=True)), None
        )
        if result is None and not shared_cache_available():
            return None
        return bool(result)

    def shared_delete(self, key: str) -> bool:
        if not self.shared_enabled():
            return False
        return bool(shared_cache_call(lambda: _sync_client().delete(self.redis_key(key)), 0))

    # --- both layers ------------------------------------------------------------------------
    def get(self, key: str) -> Any:
        """Local layer, then Redis (remembered locally); None on a miss of both."""
        _poll()
        value = self.local.get(key)
        if value is not None:
            return value
        value = self.shared_get(key)
        if value is not None:
            self.local.set(key, value)
        return value

    async def aget(self, key: str) -> Any:
        """`get` for the event loop: Redis through `redis.asyncio`, the database poll (embedded
        bus) in a worker thread, never blocking the loop."""
        await _apoll()
        value = self.local.get(key)
        if value is not None:
            return value
        value = await self.ashared_get(key)
        if value is not None:
            self.local.set(key, value)
        return value

    def set(self, key: str, value: Any, *, ttl: int | None = None, local_ttl: float | None = None) -> None:
        self.local.set(key, value, local_ttl)
        self.shared_set(key, value, ttl=ttl)

    async def aset(
        self, key: str, value: Any, *, ttl: int | None = None, local_ttl: float | None = None
    ) -> None:
        self.local.set(key, value, local_ttl)
        await self.ashared_set(key, value, ttl=ttl)

    def delete(self, key: str) -> None:
        self.local.delete(key)
        self.shared_delete(key)

    # --- invalidation -----------------------------------------------------------------------
    def publish(self, payload: dict) -> None:
        """Run this cache's handler here now, and tell every other process (after commit)."""
        from gateway.services.invalidation import invalidation_publish

        self.handle(payload)
        invalidation_publish(kind=self.kind, payload=payload)

    def handle(self, payload: dict) -> None:
        """Bus handler: the cache's own, else drop the local layer."""
        if self._on_invalidate is not None:
            self._on_invalidate(self, payload)
        else:
            self.local.clear()


def _poll() -> None:
    from gateway.services.invalidation import invalidation_poll

    invalidation_poll()


async def _apoll() -> None:
    from gateway.services.db_pool import in_db
    from gateway.services.invalidation import invalidation_poll, invalidation_poll_due

    if invalidation_poll_due():
        await in_db(invalidation_poll)  # the database leg: on the gateway's bounded pool
