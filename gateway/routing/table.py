"""The compiled table of every enabled route; a miss is a `RouteMiss(allowed)` value."""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterable
from dataclasses import dataclass

from gateway.models import HTTP_METHODS
from gateway.routing.patterns import LITERAL, PARAM, PatternError, RoutePattern, pattern_parse
from gateway.types import ResolvedRoute, RouteMatch

logger = logging.getLogger("gatehouse.routing")


@dataclass(frozen=True, slots=True)
class RouteMiss:
    """No route serves this method on this path. `allowed` is empty when no pattern matches the
    path (404), else the methods that would be served there, in `Allow` header order (405)."""

    allowed: tuple[str, ...] = ()


NOT_FOUND = RouteMiss()


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
    ) -> RouteMatch | RouteMiss:
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
            return RouteMiss(_allow_header_order(allowed))
        return NOT_FOUND
