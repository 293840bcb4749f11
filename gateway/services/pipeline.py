"""The asyncio `/gw` pipeline: one request's named steps, returning a `GatewayResult`.

Order (docs/gateway-proxy.md "Data plane", docs/gateway-policies.md):
  resolve        the route (local layer on the loop; a miss reads Redis / PostgreSQL in the pool);
                 a CORS preflight is routed by the method it asks about
  before_auth    policies: IP rules, then a CORS preflight answer
  identity       `request_identity_async` (token, revocation, permissions, condition)
  limit          rate limits (`limit_async`, one Redis operation)
  body           read from `receive` only now (an anonymous client cannot make us buffer):
                 over GATEWAY_MAX_BODY_BYTES → 413; cut short → 400 incomplete-body
  cache          response cache look-up (GET/HEAD of a route with cache_ttl_seconds)
  idempotency    unsafe methods of an idempotent route: claim / replay / complete (in the pool)
  proxy          `upstream_forward`, cancelled when the client disconnects
  cache store    a buffered 200 GET answer
The entrance (gateway/asgi.py) adds the policies' response headers, the correlation id, metrics.

Nothing here blocks the loop: Redis through redis.asyncio, the database in the bounded pool of
`gateway.services.db_pool`. No thread per request.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable
from dataclasses import dataclass
from typing import Any, TypeVar

from django.conf import settings

from common.correlation import get_correlation_id
from common.errors import ApplicationError, PayloadTooLarge, ValidationFailed
from common.tracing import reset_trace
from gateway.models import SAFE_METHODS
from gateway.policies import runner as policy
from gateway.policies.base import PolicyState
from gateway.policies.registry import EMPTY, route_policies
from gateway.responses import GatewayResponse, buffered, early_response, error_response
from gateway.routing import resolver, route_result_check, route_upstream_path
from gateway.services import headers as header_rules
from gateway.services.auth import request_identity_async
from gateway.services.db_pool import in_db
from gateway.services.idempotency import gateway_idempotency_async
from gateway.services.response_cache import (
    response_cache_aget,
    response_cache_applies,
    response_cache_aset,
)
from gateway.services.upstream import upstream_forward
from gateway.types import Identity, RouteMatch

T = TypeVar("T")
UNMATCHED = "unmatched"
DISCONNECT_EXTENSION = "gatehouse.disconnect"  # config/server/cycle.py (not imported: no server dep)
_PREFIX_LENGTH = len(settings.GATEWAY_PREFIX)  # a constant of the URL layout, not an env setting


class IncompleteBody(ValidationFailed):
    """The client's body ended before its framing said (short Content-Length, broken chunks)."""

    slug, title = "incomplete-body", "Incomplete request body"


class ClientDisconnected(Exception):
    """The client went away before its answer: the work for it is abandoned."""


@dataclass(slots=True)
class GatewayResult:
    """What one request produced: the answer and the route label its metrics carry."""

    response: GatewayResponse
    route_label: str = UNMATCHED


class Gate:
    """The request's policies, policy view, per-request policy state and trace."""

    __slots__ = ("policies", "request", "state", "trace", "_token")

    def __init__(self, traceparent: str | None) -> None:
        self.policies = EMPTY
        self.request: Any = None
        self.state = PolicyState()
        self.trace, self._token = policy.trace_begin(traceparent)

    def close(self) -> None:
        reset_trace(self._token)


class RequestContext:
    """One request as the pipeline sees it (built once from the ASGI scope)."""

    __slots__ = (
        "scope",
        "receive",
        "method",
        "path",
        "query",
        "query_string",
        "headers",
        "peer",
        "route_label",
        "_index",
        "_signal",
        "_disconnect",
    )

    def __init__(self, scope: dict[str, Any], receive: Any) -> None:
        self.scope = scope
        self.receive = receive
        self.method: str = scope["method"]
        raw = scope.get("raw_path") or scope["path"].encode("utf-8")
        self.path = raw.decode("latin-1")[_PREFIX_LENGTH:] or "/"
        self.query: bytes = scope.get("query_string", b"")
        self.query_string = self.query.decode("latin-1")
        self.headers: tuple[tuple[str, str], ...] = tuple(
            [(name.decode("latin-1"), value.decode("latin-1")) for name, value in scope["headers"]]
        )
        client = scope.get("client")
        self.peer: str = client[0] if client else ""
        self.route_label = UNMATCHED  # the matched route's pattern once resolved
        self._index: dict[str, str] | None = None
        # The server's disconnect notice (config/server/cycle.py), when it gives one.
        extensions = scope.get("extensions")
        self._signal: Any = extensions.get(DISCONNECT_EXTENSION) if extensions else None
        self._disconnect: asyncio.Task[None] | None = None

    def header(self, name: str) -> str | None:
        """The value of a request header (lower-case `name`), repeats joined (RFC 9110 §5.3)."""
        index = self._index
        if index is None:  # one pass over the headers, the first time one is asked for
            index = self._index = {}
            for key, value in self.headers:
                key = key.lower()
                index[key] = f"{index[key]}, {value}" if key in index else value
        return index.get(name)

    # --- the client going away ---------------------------------------------------------------
    def disconnected(self) -> bool:
        if self._signal is not None:
            return self._signal.disconnected
        return self._disconnect is not None and self._disconnect.done()

    async def watch(self, awaitable: Awaitable[T]) -> T:
        """Await `awaitable` unless the client disconnects first: then it is cancelled (the
        upstream connection closes) and ClientDisconnected raised. Only once the body was read.

        With the server's disconnect notice this costs no task: the notice cancels this task
        (the awaitable runs in it) and the cancellation becomes ClientDisconnected here. Any
        other ASGI server: a task waits on `receive()` beside the work."""
        signal = self._signal
        if signal is None:
            return await self._watch_with_task(awaitable)
        if signal.disconnected:
            if asyncio.iscoroutine(awaitable):
                awaitable.close()
            raise ClientDisconnected()
        task = asyncio.current_task()
        fired = False

        def cancel() -> None:  # on the loop, from the protocol's connection_lost
            nonlocal fired
            fired = True
            task.cancel()

        signal.disconnect_watch(cancel)
        try:
            return await awaitable
        except asyncio.CancelledError:
            if fired and task.uncancel() == 0:
                raise ClientDisconnected() from None
            raise
        finally:
            signal.disconnect_watch(None)

    async def _wait_disconnect(self) -> None:
        while (await self.receive())["type"] != "http.disconnect":
            pass

    async def _watch_with_task(self, awaitable: Awaitable[T]) -> T:
        if self._disconnect is None:
            self._disconnect = asyncio.ensure_future(self._wait_disconnect())
        work = asyncio.ensure_future(awaitable)
        try:
            await asyncio.wait({work, self._disconnect}, return_when=asyncio.FIRST_COMPLETED)
        except asyncio.CancelledError:
            work.cancel()
            raise
        if work.done():
            return work.result()
        work.cancel()
        with contextlib.suppress(BaseException):
            await work
        raise ClientDisconnected()

    def close(self) -> None:
        if self._disconnect is not None and not self._disconnect.done():
            self._disconnect.cancel()


# --- steps ----------------------------------------------------------------------------------------


async def _lookup(method: str, path: str) -> RouteMatch:
    result = resolver.lookup_local(method=method, path=path)
    if result is None:  # the table or Redis must be read: not on the loop
        result = await in_db(resolver.lookup, method=method, path=path)
    return route_result_check(result, method=method, path=path)


async def route_resolve_async(ctx: RequestContext) -> RouteMatch:
    """The route; a CORS preflight is routed by the method it asks about (the route need not
    list OPTIONS), when that route has a CORS policy."""
    asked = ctx.header("access-control-request-method") if ctx.method == "OPTIONS" else None
    if asked:
        try:
            match = await _lookup(asked, ctx.path)
            if route_policies(match.route).has_cors:
                return match
        except ApplicationError:
            pass
    return await _lookup(ctx.method, ctx.path)


async def body_read(ctx: RequestContext) -> bytes:
    """The whole body, at most GATEWAY_MAX_BODY_BYTES (→ 413); a body the client did not finish
    (`http.disconnect` before `more_body` False) → 400 incomplete-body, never forwarded."""
    limit = settings.GATEWAY_MAX_BODY_BYTES
    declared = ctx.header("content-length")
    if declared is not None:
        try:
            length = int(declared)
        except ValueError:
            raise ValidationFailed("Content-Length is not a number.") from None
        if length > limit:
            raise PayloadTooLarge(f"The body exceeds {limit} bytes.")
    else:
        length = None
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await ctx.receive()
        if message["type"] != "http.request":
            raise IncompleteBody("The request body is malformed or was cut off.")
        chunk = message.get("body", b"")
        if chunk:
            size += len(chunk)
            if size > limit:
                raise PayloadTooLarge(f"The body exceeds {limit} bytes.")
            chunks.append(chunk)
        if not message.get("more_body", False):
            break
    if length is not None and size != length:
        raise IncompleteBody(f"The body ended after {size} of its {length} bytes.")
    return b"".join(chunks)


def _upstream_headers(ctx: RequestContext, identity: Identity | None, gate: Gate) -> list[tuple[str, str]]:
    scheme = ctx.scope.get("scheme", "http")
    claimed = (ctx.header("x-forwarded-proto") or "").split(",")[0].strip().lower()
    if claimed in ("http", "https") and ctx.peer in header_rules.configured_trusted_proxies():
        scheme = claimed  # a trusted proxy in front terminated the client's connection
    pairs = header_rules.upstream_request_headers(
        client_headers=ctx.headers,
        peer=ctx.peer,
        scheme=scheme,
        host=ctx.header("host") or "",
        identity=identity,
        correlation_id=get_correlation_id(),
    )
    # Our traceparent replaces the client's (tracestate passes as it came), then the transforms.
    pairs = [(name, value) for name, value in pairs if name.lower() != "traceparent"]
    pairs.append(("traceparent", gate.trace.traceparent()))
    for hook in gate.policies.upstream:
        pairs = hook.upstream(gate.request, pairs)
    return pairs


async def _watched_stream(ctx: RequestContext, stream: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    """The upstream's chunks until the client goes away (then the upstream read stops)."""
    async for chunk in stream:
        if ctx.disconnected():
            raise ClientDisconnected()
        yield chunk


async def proxy_step(
    ctx: RequestContext, match: RouteMatch, identity: Identity | None, body: bytes, gate: Gate
) -> GatewayResponse:
    answer = await ctx.watch(
        upstream_forward(
            route=match.route,
            method=ctx.method,
            path=route_upstream_path(match=match),
            query_string=ctx.query,
            headers=_upstream_headers(ctx, identity, gate),
            body=body,
            idempotency_key=ctx.header("idempotency-key") is not None,
        )
    )
    stream = _watched_stream(ctx, answer.stream) if answer.stream is not None else None
    return GatewayResponse(
        status=answer.status,
        headers=list(answer.headers),
        body=answer.body if stream is None else None,
        stream=stream,
        release=answer.release,
    )


# --- the pipeline ---------------------------------------------------------------------------------


async def gateway_pipeline(ctx: RequestContext, gate: Gate) -> GatewayResult:
    """The named steps; a domain error at any step is its problem+json answer (with the route
    label once the route is known). ClientDisconnected propagates to the entrance."""
    try:
        match = await route_resolve_async(ctx)
    except ApplicationError as exc:
        return GatewayResult(error_response(exc))
    ctx.route_label = match.route.path
    try:
        return GatewayResult(await _after_route(ctx, match, gate), match.route.path)
    except ApplicationError as exc:
        return GatewayResult(error_response(exc), match.route.path)


async def _after_route(ctx: RequestContext, match: RouteMatch, gate: Gate) -> GatewayResponse:
    route = match.route
    method = ctx.method
    gate.policies = policies = route_policies(route)  # EMPTY (falsy) for a route without policies
    if policies:
        gate.request = policy.policy_request(
            method=method, path=ctx.path, headers=ctx.headers, peer=ctx.peer, route=route, lookup=ctx.header
        )
        if (early := policy.before_auth(policies, gate.request, gate.state)) is not None:
            return early_response(early)
    identity = await request_identity_async(
        authorization=ctx.header("authorization"), match=match, query_string=ctx.query_string
    )
    if policies.limit:
        if identity is not None:
            gate.request.user_id, gate.request.tenant_id = identity.user_id, identity.tenant_id
        if (early := await policy.limit_async(policies, gate.request, gate.state)) is not None:
            return early_response(early)
    body = await body_read(ctx)  # only once the caller is known
    use_cache = response_cache_applies(route=route, method=method)
    if use_cache:
        cached = await response_cache_aget(
            route=route,
            method=method,
            path=match.path,
            query_string=ctx.query_string,
            identity=identity,
            request_headers=ctx.headers,
        )
        if cached is not None:
            return buffered(status=cached.status, headers=cached.headers, body=cached.body)
    if method in SAFE_METHODS:
        response = await proxy_step(ctx, match, identity, body, gate)
    else:
        response = await gateway_idempotency_async(
            route=route,
            identity=identity,
            method=method,
            path=match.path,
            query=ctx.query,
            key_header=ctx.header("idempotency-key"),
            body=body,
            execute=lambda: proxy_step(ctx, match, identity, body, gate),
        )
    if use_cache and method == "GET" and response.stream is None:
        await response_cache_aset(
            route=route,
            method=method,
            path=match.path,
            query_string=ctx.query_string,
            identity=identity,
            request_headers=ctx.headers,
            status=response.status,
            headers=response.headers,
            body=response.body or b"",
        )
    return response
