"""`x-rate-limit`: GCRA counted in Redis (one EVALSHA per request), local per instance when Redis is down.

GCRA (generic cell rate algorithm): one key per client holding its "theoretical arrival time";
`limit` requests per `window_seconds`, bursts up to `limit`. The script reads Redis TIME, so every
instance uses one clock; a test may pass its own clock (`now_ms`) instead. Figures and the choice
against the `limits` library: docs/gateway-policies.md.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import math
import threading
import time
import weakref
from collections.abc import Callable
from typing import Any

from django.conf import settings
from prometheus_client import Counter
from redis.exceptions import NoScriptError

from gateway.policies.base import (
    Compiled,
    EarlyResponse,
    PolicyKind,
    PolicyRequest,
    PolicyState,
    unknown_keys,
)

logger = logging.getLogger("gatehouse.gateway.policies")

rate_limited_total = Counter(
    "gatehouse_rate_limited", "Requests refused by a rate limit, by route pattern.", ["route"]
)

KEYS = ("limit", "window_seconds", "key")
KEY_KINDS = ("user", "tenant", "ip", "route")
_REDIS_RETRY_SECONDS = 1.0

# KEYS[1]: the client's key. ARGV: emission interval (ms), window (ms), now (ms, "" = Redis TIME).
# Returns {allowed 0/1, remaining, retry_after_ms, reset_ms}.
GCRA_LUA = """
local interval = tonumber(ARGV[1])
local window = tonumber(ARGV[2])
local now = tonumber(ARGV[3])
if not now then
  local t = redis.call('TIME')
  now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
local tat = tonumber(redis.call('GET', KEYS[1])) or now
if tat < now then tat = now end
local new_tat = tat + interval
local allow_at = new_tat - window
if now < allow_at then
  return {0, 0, allow_at - now, tat - now}
end
redis.call('SET', KEYS[1], new_tat, 'PX', new_tat - now)
return {1, math.floor((window - (new_tat - now)) / interval), 0, new_tat - now}
"""


# The script id Redis gives it (SHA-1 is what EVALSHA names scripts by); EVAL loads it on NOSCRIPT.
GCRA_SHA = hashlib.sha1(GCRA_LUA.encode(), usedforsecurity=False).hexdigest()


def gcra_local(store: dict[str, float], key: str, interval: float, window: float, now: float) -> tuple:
    """The same algorithm in process memory (ms), for when Redis cannot be reached."""
    tat = max(store.get(key, now), now)
    new_tat = tat + interval
    allow_at = new_tat - window
    if now < allow_at:
        return 0, 0, allow_at - now, tat - now
    store[key] = new_tat
    if len(store) > 100_000:  # bounded: drop keys whose quota is full again
        for stale in [k for k, v in store.items() if v <= now][:50_000]:
            del store[stale]
    return 1, int((window - (new_tat - now)) // interval), 0, new_tat - now


class Limiter:
    """Redis first; on any Redis error the local store, logged once, retried every second."""

    def __init__(self, *, url: str | None = None, clock: Callable[[], float] | None = None) -> None:
        self.url = settings.REDIS_URL if url is None else url
        self.clock = clock  # seconds; None → Redis TIME (or time.time() locally)
        self._sync: Any = None
        self._async: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
        self._local: dict[str, float] = {}
        self._lock = threading.Lock()
        self.down_since: float | None = None if self.url else 0.0
        self._retry_at = 0.0

    # --- state --------------------------------------------------------------------------------
    def _use_redis(self) -> bool:
        return bool(self.url) and (self.down_since is None or time.monotonic() >= self._retry_at)

    def _failed(self, exc: BaseException) -> None:
        if self.down_since is None:
            self.down_since = time.time()
            logger.warning("rate limits: Redis unavailable (%s); enforcing limits per instance", exc)
        self._retry_at = time.monotonic() + _REDIS_RETRY_SECONDS

    def _succeeded(self) -> None:
        if self.down_since is not None and self.url:
            logger.warning("rate limits: Redis back; limits are shared again")
            self.down_since = None

    def _now_ms_arg(self) -> str:
        return "" if self.clock is None else str(int(self.clock() * 1000))

    def _local_hit(self, key: str, interval: int, window: int) -> tuple:
        now = (self.clock or time.time)() * 1000
        with self._lock:
            return gcra_local(self._local, key, interval, window, now)

    # --- sync ---------------------------------------------------------------------------------
    def hit(self, key: str, interval: int, window: int) -> tuple:
        if self._use_redis():
            try:
                if self._sync is None:
                    import redis

                    self._sync = redis.Redis.from_url(
                        self.url, socket_timeout=0.25, socket_connect_timeout=0.25, retry_on_timeout=False
                    )
                try:
                    result = self._sync.evalsha(GCRA_SHA, 1, key, interval, window, self._now_ms_arg())
                except NoScriptError:
                    result = self._sync.eval(GCRA_LUA, 1, key, interval, window, self._now_ms_arg())
                self._succeeded()
                return tuple(int(x) for x in result)
            except Exception as exc:  # redis errors of every kind: fall back, never fail the request
                self._failed(exc)
        return self._local_hit(key, interval, window)

    # --- async --------------------------------------------------------------------------------
    async def hit_async(self, key: str, interval: int, window: int) -> tuple:
        if self._use_redis():
            try:
                loop = asyncio.get_running_loop()
                client = self._async.get(loop)
                if client is None:
                    import redis.asyncio as aioredis

                    client = aioredis.Redis.from_url(
                        self.url, socket_timeout=0.25, socket_connect_timeout=0.25, retry_on_timeout=False
                    )
                    self._async[loop] = client
                try:
                    result = await client.evalsha(GCRA_SHA, 1, key, interval, window, self._now_ms_arg())
                except NoScriptError:
                    result = await client.eval(GCRA_LUA, 1, key, interval, window, self._now_ms_arg())
                self._succeeded()
                return tuple(int(x) for x in result)
            except Exception as exc:
                self._failed(exc)
        return self._local_hit(key, interval, window)


_limiter: Limiter | None = None


def limiter() -> Limiter:
    global _limiter
    if _limiter is None:
        _limiter = Limiter()
    return _limiter


def rate_limit_readiness() -> str:
    """For /readyz: "ok", or how limits are enforced while Redis cannot be reached."""
    current = _limiter
    if current is None or current.down_since is None:
        return "ok"
    if not current.url:
        return "local: no REDIS_URL, limits are per instance"
    return "local: Redis unavailable, limits are per instance"


class RateLimitsLocal(Exception):
    """Raised by the readiness check while limits are counted per instance (Redis unreachable)."""


def rate_limit_check() -> None:
    """/readyz check: raises RateLimitsLocal while Redis is configured but unreachable (embedded
    mode without REDIS_URL is per instance by design and reads "ok")."""
    current = _limiter
    if current is not None and current.url and current.down_since is not None:
        raise RateLimitsLocal(rate_limit_readiness())


class _RateLimit(Compiled):
    phases = ("limit",)

    def __init__(self, config: dict[str, Any]) -> None:
        self.limit_count = int(config["limit"])
        self.window_ms = int(float(config["window_seconds"]) * 1000)
        self.interval_ms = max(1, self.window_ms // self.limit_count)
        self.key_kind = config.get("key", "user")
        window_s = max(1, math.ceil(self.window_ms / 1000))
        self.policy_header = ("RateLimit-Policy", f'"gw";q={self.limit_count};w={window_s}')

    def _key(self, request: PolicyRequest) -> str:
        kind = self.key_kind
        if kind == "tenant":
            value = request.tenant_id or (f"u:{request.user_id}" if request.user_id else "")
        elif kind == "user":
            value = request.user_id
        elif kind == "route":
            value = "-"
        else:
            value = ""
        if not value:  # anonymous caller on a user/tenant limit: count by address
            kind, value = "ip", request.client_ip
        return f"ratelimit:{request.route_id}:{kind}:{value}"

    def _answer(self, request: PolicyRequest, state: PolicyState, result: tuple) -> EarlyResponse | None:
        allowed, remaining, retry_ms, reset_ms = result
        state.response_headers.append(self.policy_header)
        state.response_headers.append(("RateLimit", f'"gw";r={remaining};t={math.ceil(reset_ms / 1000)}'))
        if allowed:
            return None
        rate_limited_total.labels(request.route_path or "unmatched").inc()
        retry_after = str(max(1, math.ceil(retry_ms / 1000)))
        return EarlyResponse(
            status=429,
            headers=(("Retry-After", retry_after),),
            problem=("rate-limited", "Too many requests", f"Rate limit reached; retry in {retry_after} s."),
        )

    def limit(self, request: PolicyRequest, state: PolicyState) -> EarlyResponse | None:
        return self._answer(
            request, state, limiter().hit(self._key(request), self.interval_ms, self.window_ms)
        )

    async def limit_async(self, request: PolicyRequest, state: PolicyState) -> EarlyResponse | None:
        result = await limiter().hit_async(self._key(request), self.interval_ms, self.window_ms)
        return self._answer(request, state, result)


class RateLimit(PolicyKind):
    name, file_key = "rate_limit", "x-rate-limit"

    def validate(self, config: Any) -> list[str]:
        if not isinstance(config, dict):
            return ['an object, e.g. {"limit": 100, "window_seconds": 60, "key": "user"}']
        errors = unknown_keys(config, KEYS)
        limit = config.get("limit")
        if not isinstance(limit, int) or isinstance(limit, bool) or not 1 <= limit <= 1_000_000:
            errors.append("limit: a whole number of requests, 1 to 1000000")
        window = config.get("window_seconds")
        if not isinstance(window, int | float) or isinstance(window, bool) or not 0.1 <= window <= 86_400:
            errors.append("window_seconds: 0.1 to 86400")
        elif isinstance(limit, int) and limit > 0 and window * 1000 / limit < 1:
            errors.append("limit: more than one request per millisecond cannot be counted")
        if config.get("key", "user") not in KEY_KINDS:
            errors.append(f"key: one of {', '.join(KEY_KINDS)}")
        return errors

    def compile(self, config: Any) -> Compiled:
        return _RateLimit(config)
