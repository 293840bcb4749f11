"""Errors of route resolution, each one problem+json (common/errors.py)."""

from __future__ import annotations

from collections.abc import Iterable

from common.errors import ApplicationError, ServiceUnavailable


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
