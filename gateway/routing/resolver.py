"""Route resolution with its caches (SPEC §3 "Caches"), one `RouteResolver` object per process.

Layers, fastest first:
1. a per-process cache of (method, raw path) → result (`LocalTTLCache`), a dict look-up;
2. a per-process compiled `RouteTable` of every enabled route, built from the database once and
   kept until a "routes" invalidation arrives;
3. Redis `routes:{path}:{method}` (300 s): results shared by every instance, read only by a
   process whose table is not loaded (fresh start, or just invalidated). Each entry carries the
   routes version (`gatehouse:routes-version`, bumped on every change) it was computed under and
   is ignored once the version moved on, so a stale writer can never resurrect an old route.
Redis down: the breaker in `shared_cache` skips layer 3 and the table is rebuilt from the
database every couple of seconds; the database routes version is polled every 0.25 s.

Nothing is started by importing this module: `GatewayConfig.ready()` subscribes the resolver to
"routes" invalidations, and the listener thread is started lazily by the first resolution.
"""

from __future__ import annotations

import re
import threading
import time

from django.conf import settings
from django.core.cache import cache
from django.db import DatabaseError, transaction
from django.db.models import F

from common.local_cache import LocalTTLCache
from gateway.caching.codecs import route_result_decode, route_result_encode
from gateway.models import RoutesVersion
from gateway.routing.errors import MethodNotAllowed, NoUpstream, RouteNotFound
from gateway.routing.normalise import path_normalise
from gateway.routing.patterns import _PLACEHOLDER_RE
from gateway.routing.table import RouteMiss, RouteTable
from gateway.services.cache_stats import cache_hit, cache_miss
from gateway.services.invalidation import (
    invalidation_listener_connected,
    invalidation_listener_ensure,
    invalidation_publish,
)
from gateway.services.shared_cache import (
    shared_cache_call,
    shared_cache_delete_pattern,
    shared_cache_is_redis,
)
from gateway.types import RouteMatch

VERSION_KEY = "gatehouse:routes-version"
_LOCAL_TTL_SECONDS = 30.0  # safety net only: invalidation messages clear it within milliseconds
_TABLE_MAX_AGE_SECONDS = 300.0
# Without a live invalidation listener (Redis down, or embedded mode with several workers)
# nothing tells us about changes: keep the local layers short-lived instead.
_DEGRADED_LOCAL_TTL_SECONDS = 1.0
_DEGRADED_TABLE_MAX_AGE_SECONDS = 2.0
# Without the message bus, the database's routes version is read at most this often (by one
# thread at a time) and a change drops this process's table and matches.
_DB_VERSION_POLL_SECONDS = 0.25


def _shared_key(normalised: str, method: str) -> str:
    return f"routes:{normalised}:{method}"


def _bus_live() -> bool:
    return bool(settings.REDIS_URL) and invalidation_listener_connected()


class RouteResolver:
    """This process's route layers and the operations on them."""

    def __init__(self) -> None:
        self.matches = LocalTTLCache("routes", ttl_seconds=_LOCAL_TTL_SECONDS, max_entries=20_000)
        self.tables = LocalTTLCache("routes-table", ttl_seconds=_TABLE_MAX_AGE_SECONDS, max_entries=1)
        self._build_lock = threading.Lock()
        self._generation_lock = threading.Lock()
        self._generation = 0
        self._poll_lock = threading.Lock()
        self._next_poll = 0.0
        self._db_version_of_table: int | None = None  # read before the rows of the current table

    # --- layers ---------------------------------------------------------------------------
    def table(self) -> RouteTable:
        """This process's compiled table, built from the database when missing or expired."""
        table = self.tables.get("table")
        if table is not None:
            return table
        with self._build_lock:
            table = self.tables.get("table")
            if table is not None:
                return table
            generation = self._generation
            # Read the versions before the rows: the table is then never newer than them.
            version = shared_cache_call(lambda: int(cache.get(VERSION_KEY) or 0), -1)
            from gateway.selectors import route_resolved_list, routes_version_get

            db_version = routes_version_get()
            table = RouteTable(route_resolved_list(), version=version)
            if generation == self._generation:
                self._db_version_of_table = db_version
                ttl = _TABLE_MAX_AGE_SECONDS if _bus_live() else _DEGRADED_TABLE_MAX_AGE_SECONDS
                self.tables.set("table", table, ttl)
            return table

    def _shared_get(self, normalised: str, method: str) -> RouteMatch | RouteMiss | None:
        if not shared_cache_is_redis():
            return None  # a local-memory cache is per process: it would never see another's bump
        key = _shared_key(normalised, method)
        values = shared_cache_call(lambda: cache.get_many([VERSION_KEY, key]), None)
        if not values or key not in values:
            return None
        decoded = route_result_decode(values[key])  # JSON of the current format, else a miss
        if decoded is None or decoded[0] != int(values.get(VERSION_KEY) or 0):
            return None
        return decoded[1]

    def _shared_set(self, normalised: str, method: str, version: int, result: RouteMatch | RouteMiss) -> None:
        if version < 0 or not shared_cache_is_redis():
            return
        key = _shared_key(normalised, method)
        timeout = settings.GATEWAY_ROUTE_CACHE_TTL
        value = route_result_encode(version=version, result=result)
        shared_cache_call(lambda: cache.set(key, value, timeout), None)

    def _resolve_uncached(self, method: str, path: str) -> tuple[RouteMatch | RouteMiss, bool]:
        """(result, whether it may be kept in the local layer)."""
        generation = self._generation
        normalised, segments, raw_segments = path_normalise(path)
        table = self.tables.get("table")
        if table is None:
            shared = self._shared_get(normalised, method)
            if shared is not None:
                cache_hit("routes")
                return shared, generation == self._generation
            table = self.table()
        cache_miss("routes")
        result = table.match(method, normalised, segments, raw_segments)
        if not (isinstance(result, RouteMiss) and not result.allowed):  # random paths must not fill Redis
            self._shared_set(normalised, method, table.version, result)
        return result, generation == self._generation

    def lookup_local(self, *, method: str, path: str) -> RouteMatch | RouteMiss | None:
        """The in-process answer if there is one (no I/O: safe on the event loop)."""
        if time.monotonic() >= self._next_poll and not _bus_live() and self._db_version_of_table is not None:
            return None  # a database poll is due: go through `lookup`
        result = self.matches.get((method, path))
        if result is not None:
            cache_hit("routes")
        return result

    def lookup(self, *, method: str, path: str) -> RouteMatch | RouteMiss:
        """The match or the miss for `method` and `path` (may read Redis or the database)."""
        if time.monotonic() >= self._next_poll:
            self._db_version_poll()
        key = (method, path)
        result = self.matches.get(key)
        if result is None:
            invalidation_listener_ensure()
            result, cacheable = self._resolve_uncached(method, path or "/")
            if cacheable:
                self.matches.set(key, result, None if _bus_live() else _DEGRADED_LOCAL_TTL_SECONDS)
        else:
            cache_hit("routes")
        return result

    def resolve(self, *, method: str, path: str) -> RouteMatch:
        """`lookup`, with a miss raised as RouteNotFound / MethodNotAllowed, NoUpstream (503) for
        a route whose service has no enabled target, PathOutsideRoot (400) for a hostile path."""
        return route_result_check(self.lookup(method=method, path=path), method=method, path=path)

    # --- invalidation -----------------------------------------------------------------------
    def changed(self, payload: dict) -> None:
        """Handler of the "routes" kind: drop this process's layers (runs in every process).

        After a Redis outage a change may have been made that could not bump the version nor
        reach anyone: the shared entries are then dropped too, so no cold process trusts them.
        """
        with self._generation_lock:
            self._generation += 1
        self.tables.clear()
        self.matches.clear()
        if payload.get("after_outage"):
            shared_cache_call(_shared_version_bump, -1)
            shared_cache_call(lambda: shared_cache_delete_pattern("routes:*"), 0)

    def _db_version_poll(self) -> None:
        if not self._poll_lock.acquire(blocking=False):
            return
        try:
            self._next_poll = time.monotonic() + _DB_VERSION_POLL_SECONDS
            if self._db_version_of_table is None or _bus_live():
                return
            from gateway.selectors import routes_version_get

            try:
                version = routes_version_get()
            except DatabaseError:
                return  # the short degraded TTLs still bound how stale the table gets
            if version != self._db_version_of_table:
                self.changed({})
        finally:
            self._poll_lock.release()


def route_result_check(result: RouteMatch | RouteMiss, *, method: str, path: str) -> RouteMatch:
    """A match with an upstream, or the problem+json error its miss means."""
    if result.__class__ is RouteMatch:
        if not result.route.targets:  # type: ignore[union-attr]
            raise NoUpstream(f"Service {result.route.service} has no enabled target.")  # type: ignore[union-attr]
        return result  # type: ignore[return-value]
    if result.allowed:  # type: ignore[union-attr]
        raise MethodNotAllowed(result.allowed)  # type: ignore[union-attr]
    raise RouteNotFound(f"No route matches {method} {path or '/'}.")


resolver = RouteResolver()


def route_resolve(*, method: str, path: str) -> RouteMatch:
    """The route for `method` and `path` (the request path after `/gw`, raw, maybe %-encoded)."""
    return resolver.resolve(method=method, path=path)


def route_upstream_path(*, match: RouteMatch) -> str:
    """The path the upstream receives: the matched path, or the route's rewrite filled in with
    the captured segments (percent-encoding kept; `{**}` is the rest of a `**` pattern)."""
    rewrite = match.route.rewrite
    if not rewrite:
        return match.path
    raw = match.raw_params

    def fill(found: re.Match[str]) -> str:
        return raw.get(found.group(1), "")

    result = _PLACEHOLDER_RE.sub(fill, rewrite)
    while "//" in result:
        result = result.replace("//", "/")
    if len(result) > 1 and result.endswith("/") and not rewrite.endswith("/"):
        result = result[:-1]  # an empty `{**}` at the end leaves no dangling '/'
    return result


def _db_version_bump() -> None:
    """In the caller's transaction: the change and the new version commit together."""
    if not RoutesVersion.objects.filter(pk=1).update(version=F("version") + 1):
        # The row is created by the migration; recreated here if it was deleted (test flushes).
        RoutesVersion.objects.bulk_create([RoutesVersion(pk=1, version=1)], ignore_conflicts=True)


def _shared_version_bump() -> int:
    cache.add(VERSION_KEY, 0, timeout=None)
    return int(cache.incr(VERSION_KEY))


def route_cache_invalidate() -> None:
    """After the current transaction commits: new routes version, shared `routes:` entries
    dropped, and every process told to drop its table and local layer."""
    _db_version_bump()
    transaction.on_commit(_route_cache_invalidate_shared, robust=True)


def route_cache_invalidate_now() -> None:
    """`route_cache_invalidate` without waiting for a commit (commands, test factories)."""
    _db_version_bump()
    _route_cache_invalidate_shared()


def _route_cache_invalidate_shared() -> None:
    version = shared_cache_call(_shared_version_bump, -1)
    shared_cache_call(lambda: shared_cache_delete_pattern("routes:*"), 0)
    resolver.changed({"version": version})  # this process at once, even inside a transaction
    invalidation_publish(kind="routes", payload={"version": version})
