"""Cache hit/miss accounting by key kind: Prometheus counters plus cluster-wide totals.

`cache_hit` / `cache_miss` cost a dict increment and a counter increment (no I/O). Each process
adds its counts to a Redis hash (`gatehouse:cache-stats`) at most every few seconds, from the
invalidation listener thread, so `cache_stats()` (and `manage.py gateway_cache stats`) reports
figures for the whole cluster, at most `FLUSH_INTERVAL_SECONDS` behind. Without Redis the figures
are this process's only.

Sizes (keys per kind) are counted with SCAN; /metrics reads them through `cache_key_counts_recent`,
which keeps a count for `KEY_COUNTS_MEMO_SECONDS` so a burst of scrapes costs one SCAN per process.
"""

from __future__ import annotations

import threading
import time
from collections import Counter as _Tally

from prometheus_client import Counter

from common.local_cache import LocalTTLCache
from gateway.services.shared_cache import (
    shared_cache_call,
    shared_cache_is_redis,
    shared_cache_scan,
)

CACHE_KINDS = ("routes", "rbac", "revoked", "jwks", "responses")
STATS_KEY = "gatehouse:cache-stats"
FLUSH_INTERVAL_SECONDS = 2.0
KEY_COUNTS_MEMO_SECONDS = 15.0

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
_key_counts_memo = LocalTTLCache("cache-key-counts", ttl_seconds=KEY_COUNTS_MEMO_SECONDS, max_entries=1)
_key_counts_lock = threading.Lock()


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
    sizes = cache_key_counts()
    return {
        kind: {
            "hits": totals.get(f"{kind}:hit", 0),
            "misses": totals.get(f"{kind}:miss", 0),
            "size": sizes[kind],
        }
        for kind in CACHE_KINDS
    }


def cache_key_counts() -> dict[str, int]:
    """{kind: number of keys} now, by SCAN. Raises if Redis is unreachable."""
    return {kind: sum(1 for _ in shared_cache_scan(f"{kind}:*")) for kind in CACHE_KINDS}


def cache_key_counts_recent() -> dict[str, int] | None:
    """`cache_key_counts()` at most `KEY_COUNTS_MEMO_SECONDS` old, or None while Redis is down.

    For scrapes: concurrent callers wait for one SCAN instead of each running their own, and an
    outage (or the shared-cache breaker) gives no figure rather than a failed scrape.
    """
    counts = _key_counts_memo.get("counts")
    if counts is not None:
        return counts
    with _key_counts_lock:
        counts = _key_counts_memo.get("counts")  # counted by another thread while we waited
        if counts is None:
            counts = shared_cache_call(cache_key_counts, None)
            if counts is not None:
                _key_counts_memo.set("counts", counts)
    return counts


def cache_stats_reset() -> None:
    """Forget the counts (the Redis hash and this process's)."""
    with _lock:
        _unflushed.clear()
        _local_totals.clear()
    if shared_cache_is_redis():
        from django_redis import get_redis_connection

        get_redis_connection("default").delete(STATS_KEY)
