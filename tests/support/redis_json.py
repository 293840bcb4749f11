"""Read and write the gateway's shared-cache keys as raw Redis values (JSON text), with redis-py."""

from __future__ import annotations

import json
from typing import Any

import redis
from django.conf import settings


def _client() -> redis.Redis:
    return redis.Redis.from_url(settings.REDIS_URL)


def redis_json(key: str) -> Any:
    """The JSON value stored under `key` (None when absent); fails if it is not JSON."""
    raw = _client().get(key)
    return None if raw is None else json.loads(raw)


def redis_json_set(key: str, value: Any, ttl: int = 300) -> None:
    _client().set(key, json.dumps(value), ex=ttl)
