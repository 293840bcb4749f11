"""Every policy kind, validation of a route's `policies`, and the compiled per-route `PolicySet`."""

from __future__ import annotations

import json
import threading
from typing import Any

from django.conf import settings

from gateway.policies.base import Compiled, EarlyResponse, PolicyKind, PolicyRequest, PolicyState
from gateway.policies.cors import Cors
from gateway.policies.ip_rules import IpAllow, IpDeny
from gateway.policies.rate_limit import RateLimit
from gateway.policies.transforms import RequestHeaders, ResponseHeaders

# Order here is the order of hooks within a phase (IP: deny before allow is the same result).
KINDS: tuple[PolicyKind, ...] = (
    IpDeny(),
    IpAllow(),
    Cors(),
    RateLimit(),
    RequestHeaders(),
    ResponseHeaders(),
)
BY_NAME = {kind.name: kind for kind in KINDS}
BY_FILE_KEY = {kind.file_key: kind for kind in KINDS}


def policies_errors(policies: Any) -> dict[str, list[str]]:
    """Problems by kind name ("" for the shape of the whole object); empty when valid."""
    if policies in (None, ""):
        return {}
    if not isinstance(policies, dict):
        return {"": ['policies is an object, e.g. {"rate_limit": {"limit": 100, "window_seconds": 60}}']}
    errors: dict[str, list[str]] = {}
    for name, config in policies.items():
        kind = BY_NAME.get(name)
        if kind is None:
            errors.setdefault("", []).append(f"unknown policy {name!r}; known: {', '.join(BY_NAME)}")
            continue
        problems = kind.validate(config)
        if problems:
            errors[name] = problems
    return errors


def policies_errors_text(policies: Any) -> list[str]:
    return [
        f"{name}: {message}" if name else message
        for name, v in policies_errors(policies).items()
        for message in v
    ]


class PolicySet:
    """A route's compiled policies, sorted into phases. Empty phases are empty tuples."""

    __slots__ = ("ip", "preflight", "limit", "upstream", "response", "has_cors")

    def __init__(self, compiled: list[Compiled]) -> None:
        self.ip = tuple(c for c in compiled if "ip" in c.phases)
        self.preflight = tuple(c for c in compiled if "preflight" in c.phases)
        self.limit = tuple(c for c in compiled if "limit" in c.phases)
        self.upstream = tuple(c for c in compiled if "upstream" in c.phases)
        self.response = tuple(c for c in compiled if "response" in c.phases)
        self.has_cors = bool(self.preflight)

    def __bool__(self) -> bool:
        return bool(self.ip or self.preflight or self.limit or self.upstream or self.response)


EMPTY = PolicySet([])

_MISCONFIGURED = EarlyResponse(
    status=503,
    problem=(
        "route-misconfigured",
        "Route misconfigured",
        "This route's policies are not valid, so it is closed until they are corrected.",
    ),
)


class _Closed(Compiled):
    """Stands in for the policies of a route whose stored set does not validate (written around
    admin and load_routes, or stored before a rule was tightened). Serving such a route with
    the defaults only would drop its IP rules and limits with the bad entry: it is closed
    instead, preflights included (hence the preflight phase: they are routed to it too)."""

    phases = ("ip", "preflight")

    def ip(self, request: PolicyRequest, state: PolicyState) -> EarlyResponse | None:
        return _MISCONFIGURED


CLOSED = PolicySet([_Closed()])


def policies_compile(policies: dict[str, Any]) -> PolicySet:
    """Compile a valid `policies` object (the route's merged over the defaults)."""
    if not policies:
        return EMPTY
    return PolicySet([kind.compile(policies[kind.name]) for kind in KINDS if kind.name in policies])


def default_policies() -> dict[str, Any]:
    """GATEWAY_DEFAULT_POLICIES: the global default set (JSON object, same keys as a route's)."""
    value = getattr(settings, "GATEWAY_DEFAULT_POLICIES", None) or {}
    if isinstance(value, str):
        value = json.loads(value) if value.strip() else {}
    return value


def effective_policies(route_policies: dict[str, Any] | None) -> dict[str, Any]:
    """The defaults, each kind replaced by the route's own when it has one ({"kind": null} drops it)."""
    merged = {**default_policies(), **(route_policies or {})}
    return {name: config for name, config in merged.items() if config is not None}


def stored_policies_errors(stored: Any) -> list[str]:
    """Why a route's stored policies, merged over the defaults, cannot be used ([] when they
    can): the one test behind closing a route and the `gateway.W001` check."""
    if stored in (None, ""):
        stored = {}
    if not isinstance(stored, dict):
        return policies_errors_text(stored)
    return policies_errors_text(effective_policies(stored))


_compiled: dict[tuple[int, int], PolicySet] = {}
_lock = threading.Lock()


def route_policies(route: Any) -> PolicySet:
    """The compiled policies of a ResolvedRoute; compiled once per route version per process."""
    key = (route.id, route.version)
    found = _compiled.get(key)
    if found is not None:
        return found
    problems = stored_policies_errors(route.policies)
    if problems:  # written around the validators (shell, SQL): close the route
        import logging

        logging.getLogger("gatehouse.gateway.policies").error(
            "route %s is closed (503): its policies are not valid: %s", route.id, problems
        )
        compiled = CLOSED
    else:
        compiled = policies_compile(effective_policies(dict(route.policies or {})))
    with _lock:
        if len(_compiled) > 10_000:
            _compiled.clear()
        _compiled[key] = compiled
    return compiled


def default_policies_check() -> None:
    """Called at start-up: a bad GATEWAY_DEFAULT_POLICIES stops the process with a clear message."""
    problems = policies_errors_text(default_policies())
    if problems:
        from django.core.exceptions import ImproperlyConfigured

        raise ImproperlyConfigured("GATEWAY_DEFAULT_POLICIES: " + "; ".join(problems))
