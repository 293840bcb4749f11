"""JSON forms of the gateway's cached value types (routes), versioned by `FORMAT`.

Every value the project writes to the shared cache is JSON; an object carries `"v": FORMAT`, and a
decoder returns None (a miss, recomputed from the source of truth) for anything else: a value of
an older format, an old pickle, garbage. Nothing read from Redis is ever unpickled.
"""

from __future__ import annotations

import base64
import binascii
from typing import TYPE_CHECKING, Any

from gateway.types import ResolvedRoute, RouteMatch

if TYPE_CHECKING:  # the routing table imports the models; idempotency imports this module early
    from gateway.routing.table import RouteMiss

FORMAT = 1


def versioned(value: dict[str, Any]) -> dict[str, Any]:
    return {"v": FORMAT, **value}


def is_current(raw: Any) -> bool:
    return isinstance(raw, dict) and raw.get("v") == FORMAT


def bytes_encode(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def bytes_decode(text: Any) -> bytes:
    """Raises ValueError / TypeError for anything but base64 text (callers treat it as a miss)."""
    if not isinstance(text, str):
        raise TypeError("not base64 text")
    try:
        return base64.b64decode(text.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError) as exc:
        raise ValueError(str(exc)) from exc


def route_encode(route: ResolvedRoute) -> dict[str, Any]:
    return {
        "id": route.id,
        "methods": list(route.methods),
        "path": route.path,
        "service": route.service,
        "targets": list(route.targets),
        "rewrite": route.rewrite,
        "required_permission": route.required_permission,
        "condition": dict(route.condition),
        "timeout_ms": route.timeout_ms,
        "retry_count": route.retry_count,
        "auth_required": route.auth_required,
        "cache_ttl_seconds": route.cache_ttl_seconds,
        "idempotency": route.idempotency,
        "priority": route.priority,
        "policies": route.policies,
        "version": route.version,
    }


def route_decode(raw: dict[str, Any]) -> ResolvedRoute:
    """Raises KeyError / TypeError / ValueError on a malformed value."""
    return ResolvedRoute(
        id=int(raw["id"]),
        methods=tuple(str(method) for method in raw["methods"]),
        path=str(raw["path"]),
        service=str(raw["service"]),
        targets=tuple(str(target) for target in raw["targets"]),
        rewrite=str(raw["rewrite"]),
        required_permission=str(raw["required_permission"]),
        condition={str(k): str(v) for k, v in dict(raw["condition"]).items()},
        timeout_ms=int(raw["timeout_ms"]),
        retry_count=int(raw["retry_count"]),
        auth_required=bool(raw["auth_required"]),
        cache_ttl_seconds=int(raw["cache_ttl_seconds"]),
        idempotency=str(raw["idempotency"]),
        priority=int(raw["priority"]),
        policies=dict(raw["policies"]),
        version=int(raw["version"]),
    )


def route_result_encode(*, version: int, result: RouteMatch | RouteMiss) -> dict[str, Any]:
    """The `routes:{path}:{method}` value: the routes version it was computed under and the
    match (or the miss, with the methods for a 405's `Allow`)."""
    from gateway.routing.table import RouteMiss

    if isinstance(result, RouteMiss):
        return versioned({"routes_version": version, "miss": {"allowed": list(result.allowed)}})
    return versioned(
        {
            "routes_version": version,
            "match": {
                "route": route_encode(result.route),
                "params": dict(result.params),
                "path": result.path,
                "raw_params": dict(result.raw_params),
            },
        }
    )


def route_result_decode(raw: Any) -> tuple[int, RouteMatch | RouteMiss] | None:
    """(routes version, result), or None for anything not written in the current format."""
    from gateway.routing.table import RouteMiss

    if not is_current(raw):
        return None
    try:
        version = int(raw["routes_version"])
        if "miss" in raw:
            return version, RouteMiss(allowed=tuple(str(m) for m in raw["miss"]["allowed"]))
        match = raw["match"]
        return version, RouteMatch(
            route=route_decode(match["route"]),
            params={str(k): str(v) for k, v in dict(match["params"]).items()},
            path=str(match["path"]),
            raw_params={str(k): str(v) for k, v in dict(match["raw_params"]).items()},
        )
    except (KeyError, TypeError, ValueError, AttributeError):
        return None
