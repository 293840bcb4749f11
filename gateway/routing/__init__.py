"""Routing of `/gw/…` requests (SPEC §3): patterns, validation, normalisation, the compiled
table and the caching resolver. Importing it starts nothing (see `resolver`)."""

from gateway.routing.errors import MethodNotAllowed, NoUpstream, PathOutsideRoot, RouteNotFound
from gateway.routing.normalise import path_normalise
from gateway.routing.patterns import PatternError, RoutePattern, pattern_parse
from gateway.routing.resolver import (
    VERSION_KEY,
    RouteResolver,
    resolver,
    route_cache_invalidate,
    route_cache_invalidate_now,
    route_resolve,
    route_result_check,
    route_upstream_path,
)
from gateway.routing.table import RouteMiss, RouteTable
from gateway.routing.validation import route_config_errors, service_target_url_errors

__all__ = [
    "VERSION_KEY",
    "MethodNotAllowed",
    "NoUpstream",
    "PathOutsideRoot",
    "PatternError",
    "RouteMiss",
    "RouteNotFound",
    "RoutePattern",
    "RouteResolver",
    "RouteTable",
    "path_normalise",
    "pattern_parse",
    "resolver",
    "route_cache_invalidate",
    "route_cache_invalidate_now",
    "route_config_errors",
    "route_resolve",
    "route_result_check",
    "route_upstream_path",
    "service_target_url_errors",
]
