"""Calling the policy phases from a pipeline (gateway/services/pipeline.py, gateway/asgi.py).

The pipeline calls, in this order (docs/gateway-policies.md "Integration"):
  trace_begin(traceparent)                       once per request, before routing
  policy_request(...) / route_policies(route)    after routing
  before_auth(policies, request, state)          IP rules, then CORS preflight → EarlyResponse?
  (authentication; then request.user_id / tenant_id set)
  limit_async(policies, request, state)                        → EarlyResponse?
  upstream_headers(policies, request, trace, headers)          the headers sent upstream
  (cache, idempotency, proxy)
  response_headers(policies, request, state, headers)          every answer once the route is known
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from common.tracing import set_trace
from gateway.policies.base import EarlyResponse, PolicyRequest, PolicyState
from gateway.policies.client_address import client_address
from gateway.policies.registry import PolicySet
from gateway.policies.tracing import TraceContext, trace_context


def trace_begin(traceparent: str | None) -> tuple[TraceContext, Any]:
    """The request's trace context, made current (log lines, outbox events; reset with the token)."""
    trace = trace_context(traceparent)
    return trace, set_trace(trace)


def policy_request(
    *,
    method: str,
    path: str,
    headers: tuple[tuple[str, str], ...],
    peer: str,
    route: Any,
    lookup: Callable[[str], str | None] | None = None,
) -> PolicyRequest:
    """The hooks' view of a request (`headers` as (name, value) pairs, repeated names kept;
    `lookup`, the caller's index of them by lower-case name, repeats joined, when it has one)."""
    if lookup is not None:
        forwarded = lookup("x-forwarded-for")
    else:
        found = [value for name, value in headers if name.lower() == "x-forwarded-for"]
        forwarded = ", ".join(found) if found else None
    return PolicyRequest(
        method=method,
        path=path,
        headers=headers,
        client_ip=client_address(peer=peer, forwarded_for=forwarded),
        route_id=route.id,
        route_path=route.path,
        lookup=lookup,
    )


def before_auth(policies: PolicySet, request: PolicyRequest, state: PolicyState) -> EarlyResponse | None:
    for hook in policies.ip:
        early = hook.ip(request, state)
        if early is not None:
            return early
    for hook in policies.preflight:
        early = hook.preflight(request, state)
        if early is not None:
            return early
    return None


async def limit_async(
    policies: PolicySet, request: PolicyRequest, state: PolicyState
) -> EarlyResponse | None:
    for hook in policies.limit:
        early = await hook.limit_async(request, state)
        if early is not None:
            return early
    return None


def upstream_headers(
    policies: PolicySet, request: PolicyRequest, trace: TraceContext, headers: dict[str, str]
) -> dict[str, str]:
    """Our traceparent replaces the client's (tracestate passes as it came), then request transforms."""
    for name in [n for n in headers if n.lower() == "traceparent"]:
        del headers[name]
    headers["traceparent"] = trace.traceparent()
    if not policies.upstream:
        return headers
    pairs = list(headers.items())
    for hook in policies.upstream:
        pairs = hook.upstream(request, pairs)
    return dict(pairs)


def response_headers(
    policies: PolicySet, request: PolicyRequest, state: PolicyState, headers: list[tuple[str, str]]
) -> list[tuple[str, str]]:
    headers = [*headers, *state.response_headers]
    for hook in policies.response:
        headers = hook.response(request, headers)
    return headers
