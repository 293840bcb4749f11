"""The `/gw` ASGI 3 application: the asyncio gateway (config/asgi.py routes `/gw…` here).

Per HTTP request, on the event loop (no thread per request):
1. the correlation id: the client's valid `X-Correlation-ID` / `X-Request-ID`, else a new one;
   in the log context for the whole request and on every answer;
2. the trace context (`policies.trace_begin`: W3C traceparent continued or started);
3. the pipeline (gateway/services/pipeline.py) → a `GatewayResult`; the route's policies add
   their response headers; any domain error is problem+json, anything else a logged 500;
4. metrics and the admin dashboard (route label, method, status, time to the response head);
5. the answer goes out (gateway/responses.py), a stream chunk by chunk with back-pressure.
A client that disconnects before its answer cancels the upstream call; it is recorded as 499.

Lifespan: startup creates the database pool and builds the route table (so the first request
needs no database); shutdown closes the upstream connection pools, flushes the dashboard counts,
waits for the database pool's calls to end and stops the Redis invalidation listener thread
(last: the calls before it may still publish or poll).
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from adminsite.recording import dashboard_flush, dashboard_record
from common import telemetry
from common.correlation import accept_correlation_id, reset_correlation_id, set_correlation_id
from gateway import metrics
from gateway.policies import runner as policy
from gateway.responses import GatewayResponse, internal_error, response_send
from gateway.routing import resolver
from gateway.services.db_pool import db_pool, db_pool_shutdown, in_db
from gateway.services.invalidation import invalidation_listener_stop
from gateway.services.pipeline import (
    ClientDisconnected,
    Gate,
    GatewayResult,
    RequestContext,
    gateway_pipeline,
)
from gateway.services.upstream import upstream_close

logger = logging.getLogger("gatehouse.gateway")

CLIENT_CLOSED = 499  # recorded (never sent) for a client that went away before its answer


async def gateway_handle(scope: dict[str, Any], receive: Any, send: Any) -> None:
    started = time.perf_counter()
    method = scope["method"]
    ctx = RequestContext(scope, receive)
    correlation_id = accept_correlation_id(ctx.header("x-correlation-id") or ctx.header("x-request-id"))
    token = set_correlation_id(correlation_id)
    gate = Gate(ctx.header("traceparent"))
    result: GatewayResult | None = None
    with telemetry.span(
        "gateway.request", kind="server", trace=gate.trace, attributes={"http.request.method": method}
    ) as span:
        try:
            try:
                result = await gateway_pipeline(ctx, gate)
                response = result.response
                if gate.policies or gate.state.response_headers:
                    response.headers = policy.response_headers(
                        gate.policies, gate.request, gate.state, response.headers
                    )
            except ClientDisconnected:
                result = GatewayResult(GatewayResponse(status=CLIENT_CLOSED), ctx.route_label)
                return
            except Exception:
                logger.exception("unhandled error on %s %s", method, scope["path"])
                result = GatewayResult(internal_error(), ctx.route_label)
                response = result.response
            response.headers = [(n, v) for n, v in response.headers if n.lower() != "x-correlation-id"]
            response.headers.append(("X-Correlation-ID", correlation_id))
            _record(result, method, started)
            try:
                await response_send(send, response)
            except ClientDisconnected:
                logger.info("client went away while its answer was streamed")
        finally:
            if result is not None and result.response.status == CLIENT_CLOSED:
                _record(result, method, started)
            ctx.close()
            gate.close()
            reset_correlation_id(token)
            if result is not None:
                span.set_attribute("http.route", result.route_label)
                span.set_status_code(result.response.status)


def _record(result: GatewayResult, method: str, started: float) -> None:
    label, status = result.route_label, result.response.status
    duration = time.perf_counter() - started
    metrics.request_observe(route=label, method=method, status=status, duration=duration)
    dashboard_record(route=label, status=status, duration=duration)


async def _startup() -> None:
    db_pool()
    try:
        await in_db(resolver.table)
    except Exception:  # the database may come up later: the first request builds it then
        logger.warning("route table not built at startup", exc_info=True)


async def _shutdown() -> None:
    try:
        await upstream_close()
    except Exception:
        logger.exception("closing the upstream pools failed")
    try:
        await asyncio.to_thread(dashboard_flush)
    except Exception:
        logger.exception("flushing the dashboard counts failed")
    await asyncio.to_thread(db_pool_shutdown)
    if not await asyncio.to_thread(invalidation_listener_stop):
        logger.warning("the invalidation listener thread did not stop in time")


async def application(scope: dict[str, Any], receive: Any, send: Any) -> None:
    kind = scope["type"]
    if kind == "http":
        await gateway_handle(scope, receive, send)
    elif kind == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                try:
                    await _startup()
                except Exception as exc:
                    await send({"type": "lifespan.startup.failed", "message": str(exc)})
                    return
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await _shutdown()
                await send({"type": "lifespan.shutdown.complete"})
                return
