"""Read path for completed records: per-process memory (5 min) → Redis → database.

Only `completed` records are cached: they never change until they expire, and every entry carries
its `expires_at`, so a stale copy is never replayed after the record's retention. The database stays
the source of truth; when Redis fails, this process skips it for a few seconds instead of paying a
socket timeout on every request. Redis holds each record as JSON (`_encode` / `_decode`, the body
base64, format version `gateway.caching.codecs.FORMAT`): anything else there is a miss.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from dataclasses import dataclass
from datetime import datetime

from django.core.cache import cache
from django.utils import timezone

from common.local_cache import LocalTTLCache
from gateway.caching.codecs import bytes_decode, bytes_encode, is_current, versioned

logger = logging.getLogger(__name__)

LOCAL_TTL_SECONDS = 300
# Memory stays bounded: at most LOCAL_MAX_ENTRIES bodies of at most LOCAL_MAX_BODY_BYTES each
# (80 MB worst case per process); larger bodies are read from Redis or the database.
LOCAL_MAX_ENTRIES = 5_000
LOCAL_MAX_BODY_BYTES = 16 * 1024
REDIS_BACKOFF_SECONDS = 5.0
_local = LocalTTLCache("idempotency", ttl_seconds=LOCAL_TTL_SECONDS, max_entries=LOCAL_MAX_ENTRIES)


@dataclass(frozen=True, slots=True)
class StoredResponse:
    status: int
    body: bytes
    content_type: str = ""
    location: str = ""
    stored: bool = True  # False: too large to keep; the request ran but cannot be replayed


@dataclass(frozen=True, slots=True)
class CachedRecord:
    request_hash: str
    response: StoredResponse
    expires_at: datetime

    def is_live(self) -> bool:
        return self.expires_at >= timezone.now()  # purge deletes only expires_at < now


class _RedisBreaker:
    """After a Redis error, skip Redis in this process for REDIS_BACKOFF_SECONDS."""

    def __init__(self) -> None:
        self._open_until = 0.0
        self._lock = threading.Lock()

    def available(self) -> bool:
        return time.monotonic() >= self._open_until

    def trip(self, exc: Exception) -> None:
        with self._lock:
            if self.available():
                logger.warning("idempotency: Redis unavailable (%s); using the database only", exc)
            self._open_until = time.monotonic() + REDIS_BACKOFF_SECONDS

    def reset(self) -> None:
        self._open_until = 0.0


redis_breaker = _RedisBreaker()


def cache_key(*, scope: str, key: str) -> str:
    digest = hashlib.sha256(f"{len(scope)}:{scope}{key}".encode()).hexdigest()
    return f"idempotency:{digest}"


def cached_record_get(*, scope: str, key: str) -> tuple[CachedRecord, str] | None:
    """The completed record for (scope, key) and the layer it came from, or None."""
    name = cache_key(scope=scope, key=key)
    record = _local.get(name)
    if record is not None:
        if record.is_live():
            return record, "local"
        _local.delete(name)
    if not redis_breaker.available():
        return None
    try:
        record = _decode(cache.get(name))
    except Exception as exc:  # any Redis failure: fall through to the database
        redis_breaker.trip(exc)
        return None
    if isinstance(record, CachedRecord) and record.is_live():
        _local_put(name, record)
        return record, "redis"
    return None


def cached_record_put(*, scope: str, key: str, record: CachedRecord, shared: bool = True) -> None:
    name = cache_key(scope=scope, key=key)
    if not record.is_live():
        return
    _local_put(name, record)
    if not shared or not redis_breaker.available():
        return
    seconds = int((record.expires_at - timezone.now()).total_seconds())
    try:
        cache.set(name, _encode(record), timeout=max(seconds, 1))
    except Exception as exc:
        redis_breaker.trip(exc)


def _encode(record: CachedRecord) -> dict:
    response = record.response
    return versioned(
        {
            "request_hash": record.request_hash,
            "expires_at": record.expires_at.isoformat(),
            "response": {
                "status": response.status,
                "body": bytes_encode(response.body),
                "content_type": response.content_type,
                "location": response.location,
                "stored": response.stored,
            },
        }
    )


def _decode(raw: object) -> CachedRecord | None:
    """The record `_encode` wrote, or None for anything not written in the current format."""
    if not is_current(raw):
        return None
    assert isinstance(raw, dict)
    try:
        response = raw["response"]
        expires_at = datetime.fromisoformat(raw["expires_at"])
        if expires_at.tzinfo is None:
            return None
        return CachedRecord(
            request_hash=str(raw["request_hash"]),
            response=StoredResponse(
                status=int(response["status"]),
                body=bytes_decode(response["body"]),
                content_type=str(response["content_type"]),
                location=str(response["location"]),
                stored=bool(response["stored"]),
            ),
            expires_at=expires_at,
        )
    except (KeyError, TypeError, ValueError):
        return None


def _local_put(name: str, record: CachedRecord) -> None:
    if len(record.response.body) <= LOCAL_MAX_BODY_BYTES:
        _local.set(name, record, ttl_seconds=_local_ttl(record))


def _local_ttl(record: CachedRecord) -> float:
    remaining = (record.expires_at - timezone.now()).total_seconds()
    return max(min(float(LOCAL_TTL_SECONDS), remaining), 0.001)


def reset_redis_breaker() -> None:
    redis_breaker.reset()
