"""Who is calling and may they call this route (seam used by the proxy view).

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
from gateway.services.rbac import rbac_permissions
from gateway.services.tokens import token_authenticate
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
    route = match.route
    if not route.auth_required:
        return None
    identity = token_authenticate(authorization=authorization)
    if "permissions" not in identity.claims:
        resolved = rbac_permissions(user_id=identity.user_id, tenant_id=identity.tenant_id)
        # One that could not travel in X-User-Permissions as it is (a comma…) is not granted.
        safe = frozenset(p for p in resolved if header_rules.identity_value_is_safe(value=p))
        identity = replace(identity, permissions=safe)
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
