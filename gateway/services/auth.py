"""Who is calling and may they call this route (the gateway pipeline's authentication step).

verify the token → revocation → permissions (token claim, else RBAC) → required permission →
condition → Identity. Routes with `auth_required = false` get no identity at all, even when a
token is sent, so nothing identifying is forwarded for them.
"""

from __future__ import annotations

from dataclasses import replace
from urllib.parse import parse_qs

from common.errors import PermissionDenied
from gateway.services import headers as header_rules
from gateway.services.conditions import condition_check
from gateway.services.rbac import rbac_permissions, rbac_permissions_async
from gateway.services.tokens import token_authenticate, token_authenticate_async
from gateway.types import Identity, RouteMatch

IDENTITY_HEADERS = header_rules.IDENTITY_HEADERS


def identity_headers(identity: Identity) -> dict[str, str]:
    """The headers the upstream receives for `identity` (permissions: sorted, comma-separated)."""
    return dict(header_rules.identity_headers(identity=identity))


def request_identity(
    *, authorization: str | None, match: RouteMatch, query_string: str = ""
) -> Identity | None:
    """Identity for a request to `match`, or None for routes with auth_required = false.

    `query_string` (raw, as received) lets conditions fall back to query parameters; without it a
    condition on a query parameter fails closed (403).
    Raises NotAuthenticated (401), PermissionDenied (403) or ServiceUnavailable (503).
    """
    if not match.route.auth_required:
        return None
    identity = token_authenticate(authorization=authorization)
    if "permissions" not in identity.claims:
        resolved = rbac_permissions(user_id=identity.user_id, tenant_id=identity.tenant_id)
        identity = replace(identity, permissions=_safe_permissions(resolved))
    return _authorize(identity, match=match, query_string=query_string)


async def request_identity_async(
    *, authorization: str | None, match: RouteMatch, query_string: str = ""
) -> Identity | None:
    """`request_identity` for the asyncio pipeline: Redis through redis.asyncio, database,
    resolver and new signatures in worker threads; the loop never blocks."""
    if not match.route.auth_required:
        return None
    identity = await token_authenticate_async(authorization=authorization)
    if "permissions" not in identity.claims:
        resolved = await rbac_permissions_async(user_id=identity.user_id, tenant_id=identity.tenant_id)
        identity = replace(identity, permissions=_safe_permissions(resolved))
    return _authorize(identity, match=match, query_string=query_string)


def _safe_permissions(resolved: frozenset[str]) -> frozenset[str]:
    """One that could not travel in X-User-Permissions as it is (a comma…) is not granted."""
    return frozenset(p for p in resolved if header_rules.identity_value_is_safe(value=p))


def _authorize(identity: Identity, *, match: RouteMatch, query_string: str) -> Identity:
    """Required permission and condition (pure, no I/O)."""
    route = match.route
    if route.required_permission and route.required_permission not in identity.permissions:
        raise PermissionDenied(f"This route requires the {route.required_permission!r} permission.")
    if route.condition:
        condition_check(
            condition=route.condition,
            path_params=match.params,
            query=parse_qs(query_string, keep_blank_values=True) if query_string else {},
            identity_headers=identity_headers(identity),
        )
    return identity
