"""Who is calling and may they call this route (seam used by the proxy view).

Until token verification lands, every route that requires auth is refused: the safe default.
"""

from __future__ import annotations

from common.errors import NotAuthenticated
from gateway.types import Identity, RouteMatch


def request_identity(*, authorization: str | None, match: RouteMatch) -> Identity | None:
    """Identity for a request to `match`, or None for routes with auth_required = false.

    Raises NotAuthenticated (401), PermissionDenied (403) or ServiceUnavailable (503).
    """
    if not match.route.auth_required:
        return None
    raise NotAuthenticated("Token verification is not configured.", error=None)
