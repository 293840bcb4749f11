"""A tiny per-process TTL layer in front of Redis, for hot read paths (routes, JWKS, replays).

Thread-safe enough for our use: dict operations are atomic under the GIL, and a lost race only
costs one extra read from Redis.
"""

from __future__ import annotations

import contextlib
import time
from collections import OrderedDict
from typing import Any

_registry: list[LocalTTLCache] = []


class LocalTTLCache:
    def __init__(self, name: str, *, ttl_seconds: float, max_entries: int = 10_000) -> None:
        self.name = name
        self.ttl_seconds = ttl_seconds
        self.max_entries = max_entries
        self._data: OrderedDict[Any, tuple[float, Any]] = OrderedDict()
        _registry.append(self)

    def get(self, key: Any, default: Any = None) -> Any:
        item = self._data.get(key)
        if item is None:
            return default
        expires_at, value = item
        if expires_at < time.monotonic():
            self._data.pop(key, None)
            return default
        return value

    def set(self, key: Any, value: Any, ttl_seconds: float | None = None) -> None:
        self._data[key] = (time.monotonic() + (ttl_seconds or self.ttl_seconds), value)
        if len(self._data) > self.max_entries:
            with contextlib.suppress(KeyError):
                self._data.popitem(last=False)

    def delete(self, key: Any) -> None:
        self._data.pop(key, None)

    def clear(self) -> None:
        self._data.clear()

    def __len__(self) -> int:
        return len(self._data)


def reset_all_local_caches() -> None:
    for local_cache in _registry:
        local_cache.clear()
