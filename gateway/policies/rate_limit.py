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

# KEYS[1]: the client's key. ARGV: emission interval (ms), window (ms), now (ms, "" = Redis TIME),
# cells wanted (a lease, see Limiter; absent = 1), cells given back (an expired lease's unspent
# ones; absent = 0). A lease that does not fit is one cell instead.
# Returns {cells granted (0 = refused), remaining, retry_after_ms, reset_ms}.
GCRA_LUA = """
local interval = tonumber(ARGV[1])
local window = tonumber(ARGV[2])
local now = tonumber(ARGV[3])
local cells = tonumber(ARGV[4]) or 1
local refund = tonumber(ARGV[5]) or 0
if not now then
  local t = redis.call('TIME')
  now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
local tat = tonumber(redis.call('GET', KEYS[1])) or now
tat = tat - refund * interval
if tat < now then tat = now end
local new_tat = tat + interval * cells
if cells > 1 and now < new_tat - window then
  cells = 1
  new_tat = tat + interval
end
local allow_at = new_tat - window
if now < allow_at then
  if refund > 0 then
    if tat > now then redis.call('SET', KEYS[1], tat, 'PX', tat - now) else redis.call('DEL', KEYS[1]) end
  end
  return {0, 0, allow_at - now, tat - now}
end
redis.call('SET', KEYS[1], new_tat, 'PX', new_tat - now)
return {cells, math.floor((window - (new_tat - now)) / interval), 0, new_tat - now}
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


# Leases (the async path): a key this process hits often takes the cells its next LEASE_SECONDS
# of requests will need (by its measured rate) in one script run, and spends them without a round
# trip. A lease is at most 1/LEASE_SHARE of what the key has left, so near
# its limit a key takes one cell per request and is counted exactly as before. Never more is
# admitted than the limit (a cell is charged in Redis before it is spent); the cells of a lease
# that expired unspent are given back by the key's next round trip.
LEASE_SECONDS = 0.05
LEASE_SHARE = 20
LEASE_MAX_CELLS = 1000


class _Lease:
    __slots__ = ("cells", "until", "remaining", "reset_ms", "seen", "since", "rate", "trip")

    def __init__(self, now: float) -> None:
        self.cells = 0  # granted, not yet spent
        self.until = 0.0
        self.remaining = 0  # what Redis said the key had left after the grant
        self.reset_ms = 0
        self.seen = 0  # requests for the key since `since`
        self.since = now
        self.rate = 0.0  # requests a second, over the last measured stretch
        self.trip: asyncio.Future | None = None  # the lease round trip in flight, if any


class Limiter:
    """Redis first; on any Redis error the local store, logged once, retried every second."""

    def __init__(
        self,
        *,
        url: str | None = None,
        clock: Callable[[], float] | None = None,
        lease_seconds: float = LEASE_SECONDS,
    ) -> None:
        self.url = settings.REDIS_URL if url is None else url
        self.clock = clock  # seconds; None → Redis TIME (or time.time() locally)
        self.lease_seconds = lease_seconds
        self._sync: Any = None
        self._async: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
        self._local: dict[str, float] = {}
        self._leases: dict[str, _Lease] = {}
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

    # --- async ----------------------------------------------------------------------------------
    def lease_take(self, key: str) -> tuple | None:
        """A cell of this process's lease for `key`, without a round trip or an await (the
        common case under load); None when there is none: then `hit_async`."""
        lease = self._leases.get(key)
        if lease is None or lease.cells <= 0 or not self._use_redis():
            return None
        if (self.clock or time.monotonic)() >= lease.until:
            return None
        lease.seen += 1
        lease.cells -= 1
        return 1, lease.remaining + lease.cells, 0, lease.reset_ms

    async def hit_async(self, key: str, interval: int, window: int) -> tuple:
        if self._use_redis():
            now = (self.clock or time.monotonic)()
            lease = self._leases.get(key)
            if lease is None:
                if len(self._leases) > 100_000:
                    self._leases.clear()
                lease = self._leases[key] = _Lease(now)
            lease.seen += 1
            if lease.cells > 0 and now < lease.until:
                lease.cells -= 1
                return 1, lease.remaining + lease.cells, 0, lease.reset_ms
            trip = lease.trip
            loop = asyncio.get_running_loop()
            if trip is not None and trip.get_loop() is not loop:
                trip = lease.trip = None  # left by another event loop: not ours to wait on
            if trip is not None:
                # A lease is on its way for this key: wait for it rather than send a script run
                # of our own (under load, one trip per key and lease instead of one per request
                # that arrives meanwhile). If it is spent before our turn, we count alone.
                await asyncio.shield(trip)
                if not self._use_redis():  # that trip found Redis down: no second wait for it
                    return self._local_hit(key, interval, window)
                now = (self.clock or time.monotonic)()
                if lease.cells > 0 and now < lease.until:
                    lease.cells -= 1
                    return 1, lease.remaining + lease.cells, 0, lease.reset_ms
            leader = lease.trip is None
            if leader:
                lease.trip = loop.create_future()
            try:
                batcher = self._async.get(loop)
                if batcher is None:
                    import redis.asyncio as aioredis

                    client = aioredis.Redis.from_url(
                        self.url, socket_timeout=0.25, socket_connect_timeout=0.25, retry_on_timeout=False
                    )
                    batcher = self._async[loop] = _Batcher(client, self._now_ms_arg)
                if leader:
                    wanted = self._lease_size(lease, now)
                    refund, lease.cells = lease.cells, 0  # expired unspent: given back, by this trip only
                else:
                    wanted, refund = 1, 0
                granted, remaining, retry_ms, reset_ms = await batcher.hit(
                    (key, interval, window, wanted, refund)
                )
                self._succeeded()
            except Exception as exc:
                self._failed(exc)
                self._leases.pop(key, None)
                return self._local_hit(key, interval, window)
            finally:
                if leader:
                    done, lease.trip = lease.trip, None
                    if done is not None and not done.done():
                        done.set_result(None)
            if granted > 1:  # this request spends one; the rest wait for the next ones
                lease.cells += granted - 1  # (plus a concurrent trip's grant, if any)
                lease.until = now + self.lease_seconds
            lease.remaining, lease.reset_ms = remaining, reset_ms
            if not granted:
                return 0, 0, retry_ms, reset_ms
            return 1, remaining + (lease.cells if now < lease.until else 0), 0, reset_ms
        return self._local_hit(key, interval, window)

    def _lease_size(self, lease: _Lease, now: float) -> int:
        """The cells the key's next lease_seconds of requests need, by its rate measured over
        at least that long; 1 for a key seen now and then or near its limit."""
        elapsed = now - lease.since
        if elapsed >= self.lease_seconds:
            lease.rate = lease.seen / elapsed
            lease.seen, lease.since = 0, now
        wanted = min(int(lease.rate * self.lease_seconds), LEASE_MAX_CELLS, lease.remaining // LEASE_SHARE)
        return max(1, wanted)


class _Batcher:
    """One event loop's hits to Redis: those that arrive while a round trip is in flight go out
    together in the next one, a pipeline of EVALSHAs (each still one atomic script run, so the
    count is exactly what one EVALSHA per request gives). Under load that is one round trip, one
    write and one Redis wake-up for many requests instead of one each; alone, a request pays a
    single EVALSHA and one loop turn."""

    def __init__(self, client: Any, now_ms_arg: Callable[[], str]) -> None:
        self.client = client
        self.now_ms_arg = now_ms_arg
        self.pending: list[tuple[tuple[str, int, int, int, int], asyncio.Future]] = []
        self.flushing: asyncio.Task | None = None

    async def hit(self, args: tuple[str, int, int, int, int]) -> tuple:
        future = asyncio.get_running_loop().create_future()
        self.pending.append((args, future))
        if self.flushing is None:
            self.flushing = asyncio.ensure_future(self._flush())
        return await future

    async def _flush(self) -> None:
        try:
            while self.pending:
                batch, self.pending = self.pending, []
                try:
                    results = await self._send([args for args, _ in batch])
                except Exception as exc:  # Redis down: every waiter falls back to local counting
                    for _, future in batch:
                        if not future.done():
                            future.set_exception(exc)
                    continue
                for (_, future), result in zip(batch, results, strict=True):
                    if future.done():  # a waiter cancelled (client gone): its count stays spent
                        continue
                    if isinstance(result, Exception):
                        future.set_exception(result)
                    else:
                        future.set_result(result)
        finally:
            self.flushing = None

    async def _send(self, batch: list[tuple[str, int, int, int, int]]) -> list[Any]:
        now = self.now_ms_arg()
        if len(batch) == 1:
            key, interval, window, cells, refund = batch[0]
            try:
                result = await self.client.evalsha(GCRA_SHA, 1, key, interval, window, now, cells, refund)
            except NoScriptError:
                result = await self.client.eval(GCRA_LUA, 1, key, interval, window, now, cells, refund)
            return [tuple(int(x) for x in result)]
        results: list[Any] = [None] * len(batch)
        todo = list(range(len(batch)))
        for _ in range(2):  # NOSCRIPT (a Redis restart or SCRIPT FLUSH): load it, send those again
            pipe = self.client.pipeline(transaction=False)
            for index in todo:
                key, interval, window, cells, refund = batch[index]
                pipe.evalsha(GCRA_SHA, 1, key, interval, window, now, cells, refund)
            answers = await pipe.execute(raise_on_error=False)
            missing = []
            for index, answer in zip(todo, answers, strict=True):
                if isinstance(answer, NoScriptError):
                    missing.append(index)
                elif isinstance(answer, Exception):
                    results[index] = answer  # that script did not run: its waiter counts locally
                else:
                    results[index] = tuple(int(x) for x in answer)
            if not missing:
                return results
            await self.client.script_load(GCRA_LUA)
            todo = missing
        raise NoScriptError("the rate limit script could not be loaded")


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
    phases = ("limit", "response")

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
        key, current = self._key(request), limiter()
        result = current.lease_take(key)
        if result is None:
            result = await current.hit_async(key, self.interval_ms, self.window_ms)
        return self._answer(request, state, result)

    def response(self, request: PolicyRequest, headers: list[tuple[str, str]]) -> list[tuple[str, str]]:
        """An answer given before the count (IP rule, preflight, 401/403, an unknown route's
        error) still names the route's quota policy; `RateLimit` only comes with a count."""
        if not any(name == "RateLimit-Policy" for name, _ in headers):
            headers.append(self.policy_header)
        return headers


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
