"""Plain values passed between the gateway's services: cacheable, immutable, ORM-free."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True, slots=True)
class ResolvedRoute:
    id: int
    methods: tuple[str, ...]
    path: str
    service: str
    targets: tuple[str, ...]
    rewrite: str = ""
    required_permission: str = ""
    condition: dict[str, str] = field(default_factory=dict)
    timeout_ms: int = 3000
    retry_count: int = 2
    auth_required: bool = True
    cache_ttl_seconds: int = 0
    idempotency: str = "off"
    priority: int = 0
    # Route.policies as stored (JSON); compiled per process by gateway.policies.registry.
    policies: dict[str, Any] = field(default_factory=dict)
    # Changes whenever the route or its service is saved: the response cache's route tag.
    version: int = 0


@dataclass(frozen=True, slots=True)
class RouteMatch:
    route: ResolvedRoute
    params: dict[str, str]
    path: str  # the normalised path that matched, e.g. /users/1 (still percent-encoded)
    # Captured segments as received (percent-encoded), for building the upstream path;
    # `params` holds them decoded (for conditions). A `**` pattern captures the rest as "**".
    raw_params: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Identity:
    """Who a verified token says the caller is. Only ever built from a verified token."""

    user_id: str
    tenant_id: str = ""
    jti: str = ""
    permissions: frozenset[str] = frozenset()
    claims: dict[str, Any] = field(default_factory=dict)

    @property
    def is_authenticated(self) -> bool:  # lets DRF's IsAuthenticated accept it as request.user
        return True
