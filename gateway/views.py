"""The proxy endpoint `/gw/<path>`: resolve → body limit → identity → cache → idempotency → proxy.

Two entrances share `gateway_handle`:
- `gateway_view`, a plain Django view (urls.py), used by the test client and any server that
  runs the full Django stack;
- `GatewayDispatch`, a WSGI wrapper (config/wsgi.py) that sends `/gw/…` straight to
  `gateway_wsgi` and everything else to Django. The proxy hop then skips the whole middleware
  stack (sessions, CSRF, auth, messages…), which it never needs; correlation id, problem+json and
  metrics are done here instead. See docs/gateway-proxy.md for the measured difference.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

from django.conf import settings
from django.core.handlers.wsgi import WSGIRequest
from django.db import close_old_connections, connections
from django.http import HttpRequest, HttpResponse, HttpResponseBase, StreamingHttpResponse
from django.views.decorators.csrf import csrf_exempt

from adminsite.recording import dashboard_record
from common import telemetry
from common.correlation import (
    accept_correlation_id,
    get_correlation_id,
    reset_correlation_id,
    set_correlation_id,
)
from common.errors import ApplicationError, PayloadTooLarge, ValidationFailed, problem_response
from gateway import metrics
from gateway.models import SAFE_METHODS
from gateway.policies import runner as policy
from gateway.policies.registry import route_policies
from gateway.routing import route_resolve, route_upstream_path
from gateway.services.auth import request_identity
from gateway.services.idempotency import gateway_idempotency
from gateway.services.pipeline import Gate
from gateway.services.proxy import (
    UpstreamResponse,
    meta_header_pairs,
    proxy_forward,
    upstream_request_headers,
)
from gateway.services.response_cache import (
    response_cache_applies,
    response_cache_get,
    response_cache_set,
)
from gateway.types import Identity, RouteMatch

logger = logging.getLogger("gatehouse.gateway")

_KNOWN_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
_PATH_SAFE = "/:@!$&'()*+,;=-._~"  # PATH_INFO is decoded: a literal % must become %25


# --- Responses that keep repeated headers ------------------------------------------------------
# Django's response headers are a case-insensitive dict: two Set-Cookie would collapse into one.
# The first occurrence of each name lives in `headers` (so response["Set-Cookie"] works); the
# later ones are kept aside and emitted by items(), which is what the WSGI layer sends.


class _RepeatedHeadersMixin:
    repeated_headers: list[tuple[str, str]]

    def items(self) -> list[tuple[str, str]]:  # type: ignore[override]
        return [*self.headers.items(), *self.repeated_headers]  # type: ignore[attr-defined]

    def header_all(self, name: str) -> list[str]:
        lower = name.lower()
        return [value for key, value in self.items() if key.lower() == lower]


class ProxiedResponse(_RepeatedHeadersMixin, HttpResponse):
    pass


class ProxiedStreamingResponse(_RepeatedHeadersMixin, StreamingHttpResponse):
    pass


def _build_response(
    *, status: int, reason: str, headers: Iterable[tuple[str, str]], body: bytes | None, stream: Any
) -> HttpResponseBase:
    first: dict[str, str] = {}
    seen: set[str] = set()
    repeated: list[tuple[str, str]] = []
    for name, value in headers:
        lower = name.lower()
        if lower in seen:
            repeated.append((name, value))
        else:
            seen.add(lower)
            first[name] = value
    has_type = "content-type" in seen
    if stream is not None:
        response: HttpResponseBase = ProxiedStreamingResponse(
            stream, status=status, reason=reason or None, headers=first
        )
    else:
        response = ProxiedResponse(body or b"", status=status, reason=reason or None, headers=first)
    if not has_type:
        del response.headers["Content-Type"]  # Django's text/html default is not the upstream's
    response.repeated_headers = repeated  # type: ignore[attr-defined]
    return response


def _from_upstream(upstream: UpstreamResponse) -> HttpResponseBase:
    return _build_response(
        status=upstream.status,
        reason=upstream.reason,
        headers=upstream.headers,
        body=upstream.body,
        stream=upstream.stream,
    )


# --- The pipeline -----------------------------------------------------------------------------


def _raw_path(meta: dict[str, Any]) -> str | None:
    """The path after the /gw prefix, still percent-encoded as the client sent it."""
    prefix = settings.GATEWAY_PREFIX
    raw = meta.get("RAW_URI") or meta.get("REQUEST_URI")  # gunicorn / others: the request-target
    if raw:
        if "://" in raw:  # absolute-form request-target
            raw = "/" + raw.split("://", 1)[1].partition("/")[2]
        raw = raw.partition("?")[0].partition("#")[0]
    if not raw or not (raw == prefix or raw.startswith(prefix + "/")):
        # No raw target from the server: re-quote PATH_INFO (a WSGI latin-1 string of bytes).
        raw = quote(meta.get("PATH_INFO", "").encode("latin-1"), safe=_PATH_SAFE)
        if not (raw == prefix or raw.startswith(prefix + "/")):
            return None
    return raw[len(prefix) :] or "/"


class IncompleteBody(ValidationFailed):
    """The client's body ended before its framing said (short Content-Length, broken chunks)."""

    slug, title = "incomplete-body", "Incomplete request body"


def _read_input(meta: dict[str, Any], size: int) -> bytes:
    try:
        return meta["wsgi.input"].read(size)
    except Exception as exc:  # the server's framing errors (bad chunk size, EOF mid-chunk…)
        logger.info("request body unreadable: %s: %s", type(exc).__name__, exc)
        raise IncompleteBody("The request body is malformed or was cut off.") from None


def _read_body(request: HttpRequest) -> bytes:
    """The whole body, or an error: a body shorter than its Content-Length or a malformed or
    aborted chunked body is 400 and never reaches the upstream nor completes a key."""
    meta = request.META
    limit = settings.GATEWAY_MAX_BODY_BYTES
    declared = meta.get("CONTENT_LENGTH")
    if declared:
        try:
            length = int(declared)
        except ValueError:
            raise ValidationFailed("Content-Length is not a number.") from None
        if length > limit:
            raise PayloadTooLarge(f"The body exceeds {limit} bytes.")
        body = _read_input(meta, length) if length > 0 else b""
        if len(body) < length:
            raise IncompleteBody(f"The body ended after {len(body)} of its {length} bytes.")
    elif "chunked" in meta.get("HTTP_TRANSFER_ENCODING", "").lower():
        body = _read_input(meta, limit + 1)
        if len(body) > limit:
            raise PayloadTooLarge(f"The body exceeds {limit} bytes.")
    else:
        body = b""
    request._body = body  # request.body keeps working for the idempotency layer
    return body


def _proxy(
    request: HttpRequest, match: RouteMatch, identity: Identity | None, body: bytes, gate: Any
) -> HttpResponseBase:
    meta = request.META
    route = match.route
    headers = upstream_request_headers(
        meta=meta, target_host="", identity=identity, correlation_id=get_correlation_id()
    )
    headers = policy.upstream_headers(gate.policies, gate.request, gate.trace, headers)
    upstream = proxy_forward(
        route=route,
        method=request.method or "GET",
        path=route_upstream_path(match=match),
        query_string=meta.get("QUERY_STRING", ""),
        headers=headers,
        body=body,
        idempotency_key="HTTP_IDEMPOTENCY_KEY" in meta,
    )
    return _from_upstream(upstream)


def _with_headers(response: HttpResponseBase, headers: list[tuple[str, str]]) -> HttpResponseBase:
    """Replace a response's headers, keeping repeated ones (joined where the class cannot repeat)."""
    repeatable = isinstance(response, _RepeatedHeadersMixin)
    for name in list(response.headers):
        del response.headers[name]
    repeated: list[tuple[str, str]] = []
    for name, value in headers:
        if name not in response.headers:
            response.headers[name] = value
        elif repeatable:
            repeated.append((name, value))
        else:
            response.headers[name] = f"{response.headers[name]}, {value}"
    if repeatable:
        response.repeated_headers = repeated  # type: ignore[attr-defined]
    return response


def _early(early: Any) -> HttpResponseBase:
    if early.problem is not None:
        slug, title, detail = early.problem
        return problem_response(
            status=early.status, slug=slug, title=title, detail=detail, headers=dict(early.headers)
        )
    return _build_response(
        status=early.status, reason="", headers=early.headers, body=early.body, stream=None
    )


def _resolve(method: str, path: str, meta: dict[str, Any]) -> RouteMatch:
    """A CORS preflight is routed by the method it asks about (the route need not list OPTIONS)."""
    asked = meta.get("HTTP_ACCESS_CONTROL_REQUEST_METHOD") if method == "OPTIONS" else None
    if asked:
        try:
            match = route_resolve(method=asked, path=path)
            if route_policies(match.route).has_cors:
                return match
        except ApplicationError:
            pass
    return route_resolve(method=method, path=path)


@dataclass(slots=True)
class GatewayResult:
    """What one request produced: the response and the route label its metrics carry
    ("unmatched" until a route matched)."""

    response: HttpResponseBase
    route_label: str = "unmatched"


def gateway_handle(request: HttpRequest) -> HttpResponseBase:
    """One request under the prefix; every domain error becomes problem+json. Records metrics."""
    started = time.perf_counter()
    method = request.method or "GET"
    result: GatewayResult | None = None
    gate = Gate(request.META.get("HTTP_TRACEPARENT"))
    with telemetry.span(
        "gateway.request", kind="server", trace=gate.trace, attributes={"http.request.method": method}
    ) as span:
        try:
            result = gateway_pipeline(request, method, gate)
            if gate.policies or gate.state.response_headers:
                result.response = _with_headers(
                    result.response,
                    policy.response_headers(
                        gate.policies, gate.request, gate.state, list(result.response.items())
                    ),
                )
            return result.response
        finally:
            gate.close()
            label = result.route_label if result is not None else "unmatched"
            status = result.response.status_code if result is not None else 500  # something escaped
            metrics.requests_total.labels(
                label, method if method in _KNOWN_METHODS else "OTHER", str(status)
            ).inc()
            metrics.request_duration.labels(label).observe(time.perf_counter() - started)
            dashboard_record(route=label, status=status, duration=time.perf_counter() - started)
            span.set_attribute("http.route", label)
            span.set_status_code(status)


def gateway_pipeline(request: HttpRequest, method: str, gate: Gate) -> GatewayResult:
    """The named steps of one request; a domain error at any step is its problem+json answer
    (with the route label once the route is known)."""
    meta = request.META
    path = _raw_path(meta)
    if path is None:
        return GatewayResult(ValidationFailed("Not a gateway path.").to_response())
    try:
        match = _resolve(method, path, meta)
    except ApplicationError as exc:
        return GatewayResult(exc.to_response())
    try:
        return GatewayResult(_after_route(request, method, match, path, gate), match.route.path)
    except ApplicationError as exc:
        return GatewayResult(exc.to_response(), match.route.path)


def _after_route(
    request: HttpRequest, method: str, match: RouteMatch, path: str, gate: Gate
) -> HttpResponseBase:
    """policies before auth → identity → rate limit → body → response cache → idempotency →
    proxy → response cache store (docs/gateway-policies.md)."""
    meta = request.META
    route = match.route
    gate.policies = policies = route_policies(route)  # EMPTY (falsy) for a route without policies
    if policies:
        gate.request = policy.policy_request(
            method=method, path=path, headers=(), meta=meta, peer=meta.get("REMOTE_ADDR", ""), route=route
        )
        if (early := policy.before_auth(policies, gate.request, gate.state)) is not None:
            return _early(early)
    query_string = meta.get("QUERY_STRING", "")
    identity = request_identity(
        authorization=meta.get("HTTP_AUTHORIZATION"), match=match, query_string=query_string
    )
    if policies.limit:
        if identity is not None:
            gate.request.user_id, gate.request.tenant_id = identity.user_id, identity.tenant_id
        if (early := policy.limit_sync(policies, gate.request, gate.state)) is not None:
            return _early(early)
    # Only once the caller is known: an anonymous client must not make the gateway buffer a body.
    body = _read_body(request)
    use_cache = response_cache_applies(route=route, method=method)
    request_headers = meta_header_pairs(meta) if use_cache else []
    if use_cache:
        cached = response_cache_get(
            route=route,
            method=method,
            path=match.path,
            query_string=query_string,
            identity=identity,
            request_headers=request_headers,
        )
        if cached is not None:
            return _build_response(
                status=cached.status,
                reason="",
                headers=cached.headers,
                body=cached.body,
                stream=None,
            )
    if method in SAFE_METHODS:
        response = _proxy(request, match, identity, body, gate)
    else:
        response = gateway_idempotency(
            request=request,
            route=route,
            identity=identity,
            path=match.path,
            body=body,
            execute=lambda: _proxy(request, match, identity, body, gate),
        )
    if use_cache and method == "GET" and not isinstance(response, StreamingHttpResponse):
        response_cache_set(
            route=route,
            method=method,
            path=match.path,
            query_string=query_string,
            identity=identity,
            request_headers=request_headers,
            status=response.status_code,
            headers=list(response.items()),
            body=response.content,  # type: ignore[attr-defined]
        )
    return response


@csrf_exempt
def gateway_view(request: HttpRequest, path: str = "") -> HttpResponseBase:
    """The Django-stack entrance (middleware adds the correlation id and handles the rest)."""
    return gateway_handle(request)


# --- The lean WSGI entrance -------------------------------------------------------------------


def _internal_error() -> HttpResponse:
    return problem_response(
        status=500,
        slug="internal-error",
        title="Internal server error",
        detail="An unexpected error occurred.",
    )


def gateway_wsgi(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
    """Serve one `/gw/…` request without Django's URL resolver and middleware stack."""
    correlation_id = accept_correlation_id(
        environ.get("HTTP_X_CORRELATION_ID") or environ.get("HTTP_X_REQUEST_ID")
    )
    token = set_correlation_id(correlation_id)
    try:
        request = WSGIRequest(environ)
        request.correlation_id = correlation_id  # type: ignore[attr-defined]
        try:
            response = gateway_handle(request)
        except Exception:
            logger.exception(
                "unhandled error on %s %s", environ.get("REQUEST_METHOD"), environ.get("PATH_INFO")
            )
            response = _internal_error()
        response.headers["X-Correlation-ID"] = correlation_id
        start_response(f"{response.status_code} {response.reason_phrase}", list(response.items()))
        return _WsgiBody(response)
    finally:
        reset_correlation_id(token)


class _WsgiBody:
    """The response body for the WSGI server, with a cheaper close() than HttpResponse's.

    HttpResponse.close() sends `request_finished` (every cache and database connection walked
    for each request); a warm proxy request opened neither, so only do that when it did.
    """

    __slots__ = ("_response",)

    def __init__(self, response: HttpResponseBase) -> None:
        self._response = response

    def __iter__(self):  # type: ignore[no-untyped-def]
        return iter(self._response)

    def close(self) -> None:
        response = self._response
        for closer in response._resource_closers:  # e.g. the upstream stream: connection back to its pool
            try:
                closer()
            except Exception:
                logger.exception("closing the response failed")
        response._resource_closers.clear()
        response.closed = True
        if any(conn.connection is not None for conn in connections.all(initialized_only=True)):
            close_old_connections()


class GatewayDispatch:
    """WSGI app: `/gw` and `/gw/…` go to the lean gateway entrance, the rest to Django."""

    def __init__(self, django_app: Callable[..., Iterable[bytes]]) -> None:
        self.django_app = django_app
        self.prefix = settings.GATEWAY_PREFIX
        self.prefix_slash = self.prefix + "/"

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "")
        if path.startswith(self.prefix_slash) or path == self.prefix:
            return gateway_wsgi(environ, start_response)
        return self.django_app(environ, start_response)
