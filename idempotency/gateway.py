"""Idempotency for gateway routes (seam used by the proxy view)."""

from __future__ import annotations

from collections.abc import Callable

from django.http import HttpRequest, HttpResponseBase

from gateway.types import Identity, ResolvedRoute


def gateway_idempotency(
    *,
    request: HttpRequest,
    route: ResolvedRoute,
    identity: Identity | None,
    path: str,
    body: bytes,
    execute: Callable[[], HttpResponseBase],
) -> HttpResponseBase:
    """Run `execute` (the proxy call) under the route's idempotency policy."""
    return execute()
