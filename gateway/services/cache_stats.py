"""Cache hit/miss accounting by key kind: Prometheus counters plus cluster-wide totals.

`cache_hit` / `cache_miss` cost a dict increment and a counter increment (no I/O). Each process
adds its counts to a Redis hash (`gatehouse:cache-stats`) at most every few seconds, from the
invalidation listener thread, so `cache_stats()` (and `manage.py gateway_cache stats`) reports
figures for the whole cluster, at most `FLUSH_INTERVAL_SECONDS` behind. Without Redis the figures
are this process's only.
"""

from __future__ import annotations

import threading
import time
from collections import Counter as _Tally

from prometheus_client import Counter

from gateway.services.shared_cache import (
    shared_cache_call,
    shared_cache_is_redis,
    shared_cache_scan,
)

CACHE_KINDS = ("routes", "rbac", "revoked", "jwks", "responses")
STATS_KEY = "gatehouse:cache-stats"
FLUSH_INTERVAL_SECONDS = 2.0

CACHE_REQUESTS = Counter(
    "gatehouse_cache_requests_total",
    "Cache look-ups by key kind and result (hit or miss).",
    ["kind", "result"],
)

_lock = threading.Lock()
_unflushed: _Tally[str] = _Tally()  # "routes:hit" -> count not yet added to Redis
_local_totals: _Tally[str] = _Tally()  # everything this process counted
_children: dict[tuple[str, str], object] = {}
_last_flush = time.monotonic()


def _child(kind: str, result: str):  # noqa: ANN202  (prometheus child type is private)
    child = _children.get((kind, result))
    if child is None:
        child = _children[(kind, result)] = CACHE_REQUESTS.labels(kind=kind, result=result)
    return child


def _count(kind: str, result: str) -> None:
    _child(kind, result).inc()  # type: ignore[attr-defined]
    field = f"{kind}:{result}"
    with _lock:  # `+=` on a dict entry is not atomic across the server's threads
        _unflushed[field] += 1
        _local_totals[field] += 1


def cache_hit(kind: str) -> None:
    _count(kind, "hit")


def cache_miss(kind: str) -> None:
    _count(kind, "miss")


def cache_stats_flush(*, force: bool = False) -> None:
    """Add this process's counts to the cluster-wide hash (called by the listener thread)."""
    global _last_flush
    if not shared_cache_is_redis():
        return
    now = time.monotonic()
    if not force and now - _last_flush < FLUSH_INTERVAL_SECONDS:
        return
    with _lock:
        _last_flush = now
        pending = {field: count for field, count in _unflushed.items() if count}
        if not pending:
            return
        for field, count in pending.items():
            _unflushed[field] -= count

    def write() -> bool:
        from django_redis import get_redis_connection

        pipe = get_redis_connection("default").pipeline(transaction=False)
        for field, count in pending.items():
            pipe.hincrby(STATS_KEY, field, count)
        pipe.execute()
        return True

    if not shared_cache_call(write, False):
        with _lock:  # keep them for the next attempt
            for field, count in pending.items():
                _unflushed[field] += count


def cache_stats() -> dict[str, dict[str, int]]:
    """{kind: {hits, misses, size}}: cluster-wide hits/misses (Redis) and keys of each kind."""
    cache_stats_flush(force=True)
    totals: dict[str, int] = {}
    if shared_cache_is_redis():
        from django_redis import get_redis_connection

        raw = get_redis_connection("default").hgetall(STATS_KEY)
        totals = {key.decode(): int(value) for key, value in raw.items()}
    else:
        totals = dict(_local_totals)
    result: dict[str, dict[str, int]] = {}
    for kind in CACHE_KINDS:
        size = sum(1 for _ in shared_cache_scan(f"{kind}:*"))
        result[kind] = {
            "hits": totals.get(f"{kind}:hit", 0),
            "misses": totals.get(f"{kind}:miss", 0),
            "size": size,
        }
    return result


def cache_stats_reset() -> None:
    """Forget the counts (the Redis hash and this process's)."""
    with _lock:
        _unflushed.clear()
        _local_totals.clear()
    if shared_cache_is_redis():
        from django_redis import get_redis_connection

        get_redis_connection("default").delete(STATS_KEY)
