"""Route resolution (SPEC §3 "Patterns" and "Caches").

Layers, fastest first:
1. a per-process cache of (method, raw path) → result (`LocalTTLCache`), a dict look-up;
2. a per-process compiled table of every enabled route (exact literal paths in a dict, the other
   patterns bucketed by segment count and pre-sorted by specificity), built from the database
   once and kept until a "routes" invalidation arrives;
3. Redis `routes:{path}:{method}` (300 s): results shared by every instance, read only by a
   process whose table is not loaded (fresh start, or just invalidated), so a change does not
   make every process rebuild from the database for every path at once. Each entry carries the
   routes version (`gatehouse:routes-version`, bumped on every change) it was computed under and is
   ignored once the version moved on, so an entry written by a process that had not yet heard
   of a change can never resurrect the old route.
Redis down: the breaker in `shared_cache` skips layer 3 and the table is rebuilt from the
database every couple of seconds (no invalidation can reach us then).
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote, urlsplit

from django.conf import settings
from django.core.cache import cache
from django.db import DatabaseError, transaction
from django.db.models import F

from common.errors import ApplicationError, ServiceUnavailable
from common.local_cache import LocalTTLCache
from gateway.models import HTTP_METHODS, RoutesVersion
from gateway.services.cache_stats import cache_hit, cache_miss
from gateway.services.invalidation import (
    invalidation_listener_connected,
    invalidation_listener_ensure,
    invalidation_publish,
    invalidation_subscribe,
)
from gateway.services.shared_cache import (
    shared_cache_call,
    shared_cache_delete_pattern,
    shared_cache_is_redis,
)
from gateway.types import ResolvedRoute, RouteMatch

logger = logging.getLogger("gatehouse.routing")


# --- Errors -------------------------------------------------------------------------------------
class RouteNotFound(ApplicationError):
    status, slug, title = 404, "route-not-found", "No route matches this path"


class MethodNotAllowed(ApplicationError):
    status, slug, title = 405, "method-not-allowed", "Method not allowed"

    def __init__(self, allowed: Iterable[str], detail: str | None = None) -> None:
        self.allowed = tuple(allowed)
        allow = ", ".join(self.allowed)
        super().__init__(
            detail or f"This path accepts: {allow}.",
            headers={"Allow": allow},
            extra={"allow": list(self.allowed)},
        )


class PathOutsideRoot(ApplicationError):
    status, slug, title = 400, "invalid-path", "Invalid path"


class NoUpstream(ServiceUnavailable):
    """The route matched but its service is disabled or has no enabled target."""

    slug, title = "no-upstream", "No upstream available"


# --- Patterns -----------------------------------------------------------------------------------
LITERAL, PARAM, STAR = 0, 1, 2
_PARAM_RE = re.compile(r"^\{([A-Za-z_][A-Za-z0-9_]*)\}$")
# RFC 3986 pchar without '%' (literals are compared with decoded request segments) and '*'.
_LITERAL_RE = re.compile(r"^[A-Za-z0-9\-._~!$&'()+,;=:@]+$")
_PLACEHOLDER_RE = re.compile(r"\{([^{}]*)\}")


class PatternError(ValueError):
    pass


@dataclass(frozen=True, slots=True)
class RoutePattern:
    source: str
    segments: tuple[tuple[int, str], ...]  # (kind, literal text or parameter name); `**` excluded
    rest: bool  # ends with `**`

    @property
    def literal_count(self) -> int:
        return sum(1 for kind, _ in self.segments if kind == LITERAL)

    @property
    def param_names(self) -> tuple[str, ...]:
        return tuple(value for kind, value in self.segments if kind == PARAM)

    @property
    def is_literal(self) -> bool:
        return not self.rest and all(kind == LITERAL for kind, _ in self.segments)


def pattern_parse(source: str) -> RoutePattern:
    """Parse a route path pattern; raises PatternError saying what is wrong."""
    if not isinstance(source, str) or not source.startswith("/"):
        raise PatternError("A path pattern starts with '/'.")
    if source == "/":
        return RoutePattern(source, (), False)
    parts = source[1:].split("/")
    segments: list[tuple[int, str]] = []
    rest = False
    seen: set[str] = set()
    for index, part in enumerate(parts):
        if part == "":
            raise PatternError("Empty segment ('//' or a trailing '/') in the pattern.")
        if part == "**":
            if index != len(parts) - 1:
                raise PatternError("'**' may only be the last segment.")
            rest = True
        elif part == "*":
            segments.append((STAR, "*"))
        elif match := _PARAM_RE.match(part):
            name = match.group(1)
            if name in seen:
                raise PatternError(f"Parameter '{{{name}}}' appears twice.")
            seen.add(name)
            segments.append((PARAM, name))
        elif part in (".", ".."):
            raise PatternError("'.' and '..' are not allowed in a pattern.")
        elif "{" in part or "}" in part or "*" in part:
            raise PatternError(
                f"Segment '{part}': a parameter must be a whole segment '{{name}}', "
                "and '*' / '**' must stand alone."
            )
        elif not _LITERAL_RE.match(part):
            raise PatternError(f"Segment '{part}' has characters not allowed in a path (write it decoded).")
        else:
            segments.append((LITERAL, part))
    return RoutePattern(source, tuple(segments), rest)


def route_config_errors(
    *,
    path: Any,
    methods: Any,
    rewrite: Any = "",
    condition: Any = None,
    auth_required: Any = True,
    required_permission: Any = "",
) -> dict[str, list[str]]:
    """The one validator of a route's pattern fields (admin, model clean and load_routes)."""
    errors: dict[str, list[str]] = {}
    pattern: RoutePattern | None = None
    try:
        pattern = pattern_parse(path)
    except PatternError as exc:
        errors.setdefault("path", []).append(str(exc))

    if not isinstance(methods, list | tuple) or not methods:
        errors.setdefault("methods", []).append("Give at least one HTTP method, as a list.")
    else:
        unknown = [m for m in methods if not isinstance(m, str) or m not in HTTP_METHODS]
        if unknown:
            errors.setdefault("methods", []).append(
                f"Unknown method(s) {unknown}; use upper case from {', '.join(HTTP_METHODS)}."
            )
        elif len(set(methods)) != len(methods):
            errors.setdefault("methods", []).append("A method is listed twice.")

    if rewrite:
        if not isinstance(rewrite, str) or not rewrite.startswith("/"):
            errors.setdefault("rewrite", []).append("A rewrite starts with '/'.")
        elif pattern is not None:
            available = set(pattern.param_names) | ({"**"} if pattern.rest else set())
            for name in _PLACEHOLDER_RE.findall(rewrite):
                if name not in available:
                    known = ", ".join(f"{{{n}}}" for n in sorted(available)) or "none"
                    errors.setdefault("rewrite", []).append(
                        f"'{{{name}}}' is not captured by the pattern (captured: {known})."
                    )
            if rewrite.count("{") != rewrite.count("}"):
                errors.setdefault("rewrite", []).append("Unbalanced braces.")

    if condition not in (None, ""):
        if not isinstance(condition, Mapping):
            errors.setdefault("condition", []).append(
                'A condition is an object, e.g. {"user_id": "{{X-User-ID}}"}.'
            )
        elif not all(isinstance(k, str) and k and isinstance(v, str) for k, v in condition.items()):
            errors.setdefault("condition", []).append("A condition maps names to strings (a flat object).")

    # A public route gets no identity at all (gateway.services.auth), so a permission or condition
    # on it would silently allow everyone: refuse the combination rather than ignore it.
    if auth_required in (False, "false"):
        ignored = [
            name
            for name, value in (("required_permission", required_permission), ("condition", condition))
            if value not in (None, "", {})
        ]
        if ignored:
            fields = " and ".join(ignored)
            errors.setdefault("auth_required", []).append(
                f"A public route (auth_required = false) identifies nobody, so its {fields} would "
                f"never be checked; remove {'them' if len(ignored) > 1 else 'it'} or require auth."
            )
    return errors


def service_target_url_errors(url: Any) -> list[str]:
    """A target is a base URL: http(s), a host, optionally a base path; no query or fragment."""
    if not isinstance(url, str) or not url:
        return ["Give a URL such as http://10.0.0.5:8080."]
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        return [f"Not a valid URL: {exc}."]
    errors = []
    if parts.scheme not in ("http", "https"):
        errors.append("Only http:// and https:// targets are supported.")
    if not parts.hostname:
        errors.append("The URL has no host.")
    if parts.query or parts.fragment or "?" in url or "#" in url:
        errors.append("A target URL takes no query string or fragment.")
    if parts.username or parts.password:
        errors.append("A target URL takes no credentials.")
    if port == 0:
        errors.append("Port 0 is not valid.")
    return errors


# --- Normalisation ------------------------------------------------------------------------------
def path_normalise(raw_path: str) -> tuple[str, tuple[str, ...], tuple[str, ...]]:
    """(normalised path, decoded segments, raw segments) of a request path.

    Removes empty and '.' segments, applies '..' (also percent-encoded, '%2e%2e'); going above
    the root, a NUL byte, or an encoded '/' or '\\' that hides a dot segment → PathOutsideRoot.
    The normalised path keeps the client's percent-encoding and a trailing '/'.
    """
    raw_segments: list[str] = []
    segments: list[str] = []
    trailing = False
    for part in raw_path.split("/"):
        if not part:
            trailing = True
            continue
        decoded = unquote(part) if "%" in part else part
        if decoded == "." or decoded == "..":
            if decoded == "..":
                if not raw_segments:
                    raise PathOutsideRoot("The path goes above the root ('..').")
                raw_segments.pop()
                segments.pop()
            trailing = True
            continue
        if "\x00" in decoded:
            raise PathOutsideRoot("The path contains a NUL byte.")
        if ("/" in decoded or "\\" in decoded) and any(
            piece in (".", "..") for piece in re.split(r"[/\\]", decoded)
        ):
            raise PathOutsideRoot("The path hides a dot segment behind an encoded separator.")
        raw_segments.append(part)
        segments.append(decoded)
        trailing = False
    normalised = "/" + "/".join(raw_segments)
    if trailing and raw_segments:
        normalised += "/"
    return normalised, tuple(segments), tuple(raw_segments)


# --- The compiled table ---------------------------------------------------------------------------
_NOT_FOUND = ("404",)


@dataclass(frozen=True, slots=True)
class _Entry:
    route: ResolvedRoute
    pattern: RoutePattern
    methods: frozenset[str]  # as served: HEAD added where GET is
    sort_key: tuple
    explicit: frozenset[str]  # as configured

    def capture(
        self, segments: tuple[str, ...], raw_segments: tuple[str, ...]
    ) -> tuple[dict[str, str], dict[str, str]] | None:
        params: dict[str, str] = {}
        raw_params: dict[str, str] = {}
        for index, (kind, value) in enumerate(self.pattern.segments):
            if kind == LITERAL:
                if segments[index] != value:
                    return None
            elif kind == PARAM:
                params[value] = segments[index]
                raw_params[value] = raw_segments[index]
        if self.pattern.rest:
            start = len(self.pattern.segments)
            params["**"] = "/".join(segments[start:])
            raw_params["**"] = "/".join(raw_segments[start:])
        return params, raw_params


def _first_literal(pattern: RoutePattern) -> str | None:
    if pattern.segments and pattern.segments[0][0] == LITERAL:
        return pattern.segments[0][1]
    return None


def _effective_methods(methods: Iterable[str]) -> frozenset[str]:
    result = set(methods)
    if "GET" in result:
        result.add("HEAD")  # HEAD is served wherever GET is (RFC 9110 §9.3.2)
    return frozenset(result)


def _allow_header_order(methods: Iterable[str]) -> tuple[str, ...]:
    present = set(methods)
    return tuple(m for m in HTTP_METHODS if m in present)


class RouteTable:
    """Every enabled route, compiled once; `match` costs microseconds."""

    def __init__(self, routes: Iterable[ResolvedRoute], *, version: int) -> None:
        self.version = version
        self.exact: dict[tuple[str, ...], list[_Entry]] = {}
        self.fixed: dict[int, list[_Entry]] = {}
        self.rest: list[_Entry] = []
        self._by_count: dict[tuple[int, str | None], list[_Entry]] = {}
        self._lock = threading.Lock()
        count = 0
        for route in routes:
            try:
                pattern = pattern_parse(route.path)
            except PatternError as exc:  # written around the validators (shell, SQL): skip, say so
                logger.error("route %s has an invalid pattern %r, ignored: %s", route.id, route.path, exc)
                continue
            ranks = tuple(2 if kind == LITERAL else 1 for kind, _ in pattern.segments)
            # Most specific first: more literal segments, then priority, then a fixed-length
            # pattern before a `**` one, then literals earlier in the path, then the older route.
            sort_key = (pattern.literal_count, route.priority, not pattern.rest, ranks, -route.id)
            entry = _Entry(
                route, pattern, _effective_methods(route.methods), sort_key, frozenset(route.methods)
            )
            count += 1
            if pattern.is_literal:
                self.exact.setdefault(tuple(v for _, v in pattern.segments), []).append(entry)
            elif pattern.rest:
                self.rest.append(entry)
            else:
                self.fixed.setdefault(len(pattern.segments), []).append(entry)
        self._first_literals = frozenset(
            literal
            for e in (*self.rest, *(x for xs in self.fixed.values() for x in xs))
            if (literal := _first_literal(e.pattern)) is not None
        )
        for entries in self.exact.values():
            entries.sort(key=lambda e: e.sort_key, reverse=True)
        for entries in self.fixed.values():
            entries.sort(key=lambda e: e.sort_key, reverse=True)
        self.size = count

    def _candidates(self, segments: tuple[str, ...]) -> list[_Entry]:
        """Patterns that may match a path of this many segments starting with this segment, most
        specific first. Bucketed by (segment count, first literal): APIs are usually prefixed by
        service, so a look-up scans a handful of patterns, not all of them."""
        count = len(segments)
        first = segments[0] if segments and segments[0] in self._first_literals else None
        key = (count, first)
        candidates = self._by_count.get(key)
        if candidates is None:
            candidates = [
                *self.fixed.get(count, ()),
                *(e for e in self.rest if len(e.pattern.segments) <= count),
            ]
            candidates = [e for e in candidates if _first_literal(e.pattern) in (None, first)]
            candidates.sort(key=lambda e: e.sort_key, reverse=True)
            if count <= 64:  # keys are bounded: known literals × counts
                with self._lock:
                    self._by_count[key] = candidates
        return candidates

    def match(
        self, method: str, normalised: str, segments: tuple[str, ...], raw_segments: tuple[str, ...]
    ) -> RouteMatch | tuple:
        allowed: set[str] = set()
        # HEAD goes to a route listing HEAD itself if one matches, else to the route serving GET.
        implied_head: RouteMatch | None = None
        for entry in self.exact.get(segments, ()):
            if method in entry.explicit:
                return RouteMatch(route=entry.route, params={}, path=normalised, raw_params={})
            if implied_head is None and method in entry.methods:
                implied_head = RouteMatch(route=entry.route, params={}, path=normalised, raw_params={})
            allowed |= entry.methods
        for entry in self._candidates(segments):
            captured = entry.capture(segments, raw_segments)
            if captured is None:
                continue
            if method in entry.explicit:
                return RouteMatch(
                    route=entry.route, params=captured[0], path=normalised, raw_params=captured[1]
                )
            if implied_head is None and method in entry.methods:
                implied_head = RouteMatch(
                    route=entry.route, params=captured[0], path=normalised, raw_params=captured[1]
                )
            allowed |= entry.methods
        if implied_head is not None:
            return implied_head
        if allowed:
            return ("405", _allow_header_order(allowed))
        return _NOT_FOUND


# --- Per-process state and the shared layer -----------------------------------------------------
VERSION_KEY = "gatehouse:routes-version"
_LOCAL_TTL_SECONDS = 30.0  # safety net only: invalidation messages clear it within milliseconds
_TABLE_MAX_AGE_SECONDS = 300.0
# Without a live invalidation listener (Redis down, or embedded mode with several workers)
# nothing tells us about changes: keep the local layers short-lived instead.
_DEGRADED_LOCAL_TTL_SECONDS = 1.0
_DEGRADED_TABLE_MAX_AGE_SECONDS = 2.0

_matches = LocalTTLCache("routes", ttl_seconds=_LOCAL_TTL_SECONDS, max_entries=20_000)
_tables = LocalTTLCache("routes-table", ttl_seconds=_TABLE_MAX_AGE_SECONDS, max_entries=1)
_build_lock = threading.Lock()
_generation_lock = threading.Lock()
_generation = 0
# Without the message bus, the database's routes version is read at most this often (by one
# request thread at a time) and a change drops this process's table and matches: propagation
# well under a second without Redis, for one tiny query per interval per process.
_DB_VERSION_POLL_SECONDS = 0.25
_db_version_poll_lock = threading.Lock()
_db_version_next_poll = 0.0
_db_version_of_table: int | None = None  # read before the rows of the current table


def _shared_key(normalised: str, method: str) -> str:
    return f"routes:{normalised}:{method}"


def _bus_live() -> bool:
    return bool(settings.REDIS_URL) and invalidation_listener_connected()


def route_table() -> RouteTable:
    """This process's compiled table, built from the database when missing or expired."""
    table = _tables.get("table")
    if table is not None:
        return table
    with _build_lock:
        table = _tables.get("table")
        if table is not None:
            return table
        generation = _generation
        # Read the versions before the rows: the table is then never newer than them.
        version = shared_cache_call(lambda: int(cache.get(VERSION_KEY) or 0), -1)
        from gateway.selectors import route_resolved_list, routes_version_get

        db_version = routes_version_get()
        table = RouteTable(route_resolved_list(), version=version)
        if generation == _generation:
            global _db_version_of_table
            _db_version_of_table = db_version
            ttl = _TABLE_MAX_AGE_SECONDS if _bus_live() else _DEGRADED_TABLE_MAX_AGE_SECONDS
            _tables.set("table", table, ttl)
        return table


def _shared_get(normalised: str, method: str) -> RouteMatch | tuple | None:
    if not shared_cache_is_redis():
        return None  # a local-memory cache is per process: it would never see another's bump
    key = _shared_key(normalised, method)
    values = shared_cache_call(lambda: cache.get_many([VERSION_KEY, key]), None)
    if not values or key not in values:
        return None
    entry = values[key]
    version = int(values.get(VERSION_KEY) or 0)
    if not isinstance(entry, tuple) or len(entry) != 2 or entry[0] != version:
        return None
    return entry[1]


def _shared_set(normalised: str, method: str, version: int, result: RouteMatch | tuple) -> None:
    if version < 0 or not shared_cache_is_redis():
        return
    key = _shared_key(normalised, method)
    timeout = settings.GATEWAY_ROUTE_CACHE_TTL
    shared_cache_call(lambda: cache.set(key, (version, result), timeout), None)


def _resolve_uncached(method: str, path: str) -> tuple[RouteMatch | tuple, bool]:
    """(result, whether it may be kept in the local layer)."""
    generation = _generation
    normalised, segments, raw_segments = path_normalise(path)
    table = _tables.get("table")
    if table is None:
        shared = _shared_get(normalised, method)
        if shared is not None:
            cache_hit("routes")
            return shared, generation == _generation
        table = route_table()
    cache_miss("routes")
    result = table.match(method, normalised, segments, raw_segments)
    if result is not _NOT_FOUND:  # random paths must not fill Redis
        _shared_set(normalised, method, table.version, result)
    return result, generation == _generation


def route_resolve(*, method: str, path: str) -> RouteMatch:
    """The route for `method` and `path` (the request path after `/gw`, raw, maybe %-encoded).

    Raises PathOutsideRoot (400), RouteNotFound (404), MethodNotAllowed (405, `Allow` header) or
    NoUpstream (503: the route's service is disabled or has no enabled target).
    """
    if time.monotonic() >= _db_version_next_poll:
        _db_version_poll()
    key = (method, path)
    result = _matches.get(key)
    if result is None:
        invalidation_listener_ensure()
        result, cacheable = _resolve_uncached(method, path or "/")
        if cacheable:
            _matches.set(key, result, None if _bus_live() else _DEGRADED_LOCAL_TTL_SECONDS)
    else:
        cache_hit("routes")
    if result.__class__ is RouteMatch:
        if not result.route.targets:
            raise NoUpstream(f"Service {result.route.service} has no enabled target.")
        return result
    if result[0] == "405":
        raise MethodNotAllowed(result[1])
    raise RouteNotFound(f"No route matches {method} {path or '/'}.")


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


# --- Invalidation ----------------------------------------------------------------------------------
def _routes_changed(payload: dict) -> None:
    """Handler of the "routes" kind: drop this process's layers (runs in every process).

    After a Redis outage a change may have been made that could not bump the version nor reach
    anyone: the shared entries are then dropped too, so no cold process trusts them.
    """
    global _generation
    with _generation_lock:
        _generation += 1
    _tables.clear()
    _matches.clear()
    if payload.get("after_outage"):
        shared_cache_call(_shared_version_bump, -1)
        shared_cache_call(lambda: shared_cache_delete_pattern("routes:*"), 0)


def _db_version_poll() -> None:
    """Drop this process's layers when the database's routes version moved since the table was
    built. Only while the message bus is not live; one thread polls, the others go on."""
    global _db_version_next_poll
    if not _db_version_poll_lock.acquire(blocking=False):
        return
    try:
        _db_version_next_poll = time.monotonic() + _DB_VERSION_POLL_SECONDS
        if _db_version_of_table is None or _bus_live():
            return
        from gateway.selectors import routes_version_get

        try:
            version = routes_version_get()
        except DatabaseError:
            return  # the short degraded TTLs still bound how stale the table gets
        if version != _db_version_of_table:
            _routes_changed({})
    finally:
        _db_version_poll_lock.release()


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
    _routes_changed({"version": version})  # this process at once, even inside a transaction
    invalidation_publish(kind="routes", payload={"version": version})


invalidation_subscribe("routes", _routes_changed)
