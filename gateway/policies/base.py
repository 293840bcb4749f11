"""The policy mechanism: one shape for every kind (docs/gateway-policies.md).

A kind is a class with `validate(config) -> list[str]` and `compile(config) -> Compiled`. The
compiled object implements only the hooks it needs; the route's `PolicySet` sorts them into the
fixed phases once, when the route table is built, so a route without policies gets `EMPTY`.

Phases, in request order (the pipeline calls them at these points):
  1. `ip`            before anything else (no body, no token read)
  2. `preflight`     CORS preflight, before authentication
     (authentication happens here, in the pipeline)
  3. `limit`         after authentication (the identity is known)
  4. `upstream`      transforms of the headers sent upstream
     (response cache, idempotency and proxy happen here, in the pipeline)
  5. `response`      transforms of the headers sent back (also on early answers of phase 3)
A hook returns None (continue) or an `EarlyResponse`; headers every answer of the route must
carry (RateLimit, CORS on actual requests) are appended to `state.response_headers`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar


@dataclass(slots=True)
class PolicyRequest:
    """What a hook sees of the request. `client_ip` is the address as the gateway sees it
    (X-Forwarded-For believed only from FORWARDED_ALLOW_IPS peers, see client_address.py)."""

    method: str
    path: str
    headers: tuple[tuple[str, str], ...]  # (name, value) as received, repeated names kept
    client_ip: str
    route_id: int = 0
    route_path: str = ""
    user_id: str = ""  # after authentication; "" before it or on a public route
    tenant_id: str = ""
    # The pipeline's header index (lower-case name → value, repeats joined), when it has one:
    # one dict lookup instead of a pass over the headers for every question a hook asks.
    lookup: Callable[[str], str | None] | None = None

    def header(self, name: str) -> str | None:
        lower = name.lower()
        if self.lookup is not None:
            return self.lookup(lower)
        found = [value for key, value in self.headers if key.lower() == lower]
        return ", ".join(found) if found else None  # repeats joined, as the pipeline's index does


@dataclass(frozen=True, slots=True)
class EarlyResponse:
    """An answer given by a policy instead of the upstream's."""

    status: int
    headers: tuple[tuple[str, str], ...] = ()
    body: bytes = b""
    # problem+json: (slug, title, detail) — the pipeline renders it with common.errors
    problem: tuple[str, str, str] | None = None


@dataclass(slots=True)
class PolicyState:
    """Per request: headers to add to whatever answer the route gives."""

    response_headers: list[tuple[str, str]] = field(default_factory=list)


class Compiled:
    """A compiled policy; override the hooks of the phases it takes part in."""

    phases: ClassVar[tuple[str, ...]] = ()

    def ip(self, request: PolicyRequest, state: PolicyState) -> EarlyResponse | None:
        return None

    def preflight(self, request: PolicyRequest, state: PolicyState) -> EarlyResponse | None:
        return None

    def limit(self, request: PolicyRequest, state: PolicyState) -> EarlyResponse | None:
        return None

    async def limit_async(self, request: PolicyRequest, state: PolicyState) -> EarlyResponse | None:
        return self.limit(request, state)

    def upstream(self, request: PolicyRequest, headers: list[tuple[str, str]]) -> list[tuple[str, str]]:
        return headers

    def response(self, request: PolicyRequest, headers: list[tuple[str, str]]) -> list[tuple[str, str]]:
        return headers


class PolicyKind:
    """A kind of policy: the route-file key, the model key, and how to check and compile it."""

    name: ClassVar[str]  # key in Route.policies
    file_key: ClassVar[str]  # key in the route file (SPEC §3)

    def validate(self, config: Any) -> list[str]:
        raise NotImplementedError

    def compile(self, config: Any) -> Compiled:
        raise NotImplementedError


def is_str_list(value: Any) -> bool:
    return isinstance(value, list) and all(isinstance(item, str) and item for item in value)


def unknown_keys(config: Mapping[str, Any], allowed: Iterable[str]) -> list[str]:
    extra = sorted(set(config) - set(allowed))
    return [f"unknown key(s) {', '.join(extra)}; allowed: {', '.join(sorted(allowed))}"] if extra else []
