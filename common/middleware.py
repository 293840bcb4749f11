"""Correlation id and problem+json for everything outside DRF (404, 500, …), DEBUG or not."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from django.conf import settings
from django.core.exceptions import PermissionDenied, RequestDataTooBig, SuspiciousOperation
from django.http import Http404, HttpRequest, HttpResponse, HttpResponseBase
from django.urls import get_resolver, get_urlconf
from django.views.debug import ExceptionReporter

from common import telemetry
from common.correlation import accept_correlation_id, reset_correlation_id, set_correlation_id
from common.errors import PROBLEM_CONTENT_TYPE, ApplicationError, problem_response
from common.tracing import reset_trace, set_trace, trace_context

logger = logging.getLogger("gatehouse.errors")
CORRELATION_HEADER = "X-Correlation-ID"
# Where the exception behind one of Django's DEBUG pages is kept for ProblemDetailsMiddleware.
_DEBUG_EXCEPTION_ATTR = "_problem_debug_exception"


class CorrelationIdMiddleware:
    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        meta = request.META
        correlation_id = accept_correlation_id(
            meta.get("HTTP_X_CORRELATION_ID") or meta.get("HTTP_X_REQUEST_ID")
        )
        request.correlation_id = correlation_id  # type: ignore[attr-defined]
        token = set_correlation_id(correlation_id)
        try:
            response = self.get_response(request)
            response[CORRELATION_HEADER] = correlation_id
            return response
        finally:
            reset_correlation_id(token)


class TraceMiddleware:
    """W3C trace context for the Django side (/api, /internal, admin, /readyz…), as the gateway
    hop has it: the client's `traceparent` continued (same trace id) or a trace started, current
    for the request (log lines, outbox events). With export on, the request is a server span
    `django.request` (docs/telemetry.md) whose children are the spans made while it runs
    (`order.create`…); off, no span is made."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        trace = trace_context(request.META.get("HTTP_TRACEPARENT"))
        request.trace_id = trace.trace_id  # type: ignore[attr-defined]  # for lines logged after the reset
        token = set_trace(trace)
        try:
            if not telemetry.enabled():
                return self.get_response(request)
            with telemetry.span(
                "django.request",
                kind="server",
                trace=trace,
                attributes={"http.request.method": request.method},
            ) as span:
                response = self.get_response(request)
                match = getattr(request, "resolver_match", None)
                span.set_attribute("http.route", f"/{match.route}" if match is not None else "unmatched")
                span.set_status_code(response.status_code)
                return response
        finally:
            reset_trace(token)


class _SilentExceptionReporter(ExceptionReporter):
    """Stands in for Django's technical 500 page (DEBUG only): renders nothing, keeps the error.

    Django converts an exception escaping a middleware or the URL resolver into a response
    right where it happens, so no outer middleware ever sees the exception; with DEBUG on, that
    response is the HTML traceback page, built by the request's `exception_reporter_class`.
    """

    def __init__(self, request: HttpRequest | None, *args: Any, **kwargs: Any) -> None:
        super().__init__(request, *args, **kwargs)
        if request is not None:
            setattr(request, _DEBUG_EXCEPTION_ATTR, self.exc_value)

    def get_traceback_html(self) -> str:
        return ""

    def get_traceback_text(self) -> str:
        return ""


class ProblemDetailsMiddleware:
    """Turns uncaught exceptions and Django's error pages into problem+json, whatever DEBUG says.

    With DEBUG off, Django answers errors it converts itself through the `handlerNNN` views of
    the URLconf (common.views, problem+json). With DEBUG on it would answer with its technical
    pages (URL patterns, settings, tracebacks) instead; those are replaced here by what the
    same handlers answer, so SPEC §2 holds in every environment.
    """

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponseBase:
        request.exception_reporter_class = _SilentExceptionReporter  # type: ignore[attr-defined]
        response = self.get_response(request)
        if response.status_code < 400 or response.get("Content-Type") == PROBLEM_CONTENT_TYPE:
            return response
        exception = request.__dict__.pop(_DEBUG_EXCEPTION_ATTR, None)
        if exception is not None:
            return _handler_response(request, response, exception)
        if response.status_code == 404 and getattr(request, "resolver_match", None) is None:
            # No URL pattern matched (Resolver404): Django's DEBUG page lists every pattern.
            return _handler_response(request, response, None)
        return response

    def process_exception(self, request: HttpRequest, exception: Exception) -> HttpResponse | None:
        return exception_to_problem(request, exception)


def _handler_response(
    request: HttpRequest, replaced: HttpResponseBase, exception: Exception | None
) -> HttpResponseBase:
    """What the URLconf's error handler answers for `replaced`'s status, as with DEBUG off."""
    status = replaced.status_code
    handler = get_resolver(get_urlconf()).resolve_error_handler(status)
    response = handler(request) if status == 500 else handler(request, exception=exception)
    # Django already logged the error (with its traceback) when it built the page replaced here.
    if getattr(replaced, "_has_been_logged", False):
        response._has_been_logged = True  # type: ignore[attr-defined]
    return response


def exception_to_problem(request: HttpRequest, exception: Exception) -> HttpResponse:
    if isinstance(exception, ApplicationError):
        return exception.to_response()
    if isinstance(exception, Http404):
        return problem_response(status=404, slug="not-found", title="Not found", detail="No such resource.")
    if isinstance(exception, PermissionDenied):
        return problem_response(status=403, slug="forbidden", title="Forbidden")
    if isinstance(exception, RequestDataTooBig):
        return problem_response(
            status=413,
            slug="payload-too-large",
            title="Request body too large",
            detail=f"The body exceeds {settings.DATA_UPLOAD_MAX_MEMORY_SIZE} bytes.",
        )
    if isinstance(exception, SuspiciousOperation):
        return problem_response(status=400, slug="bad-request", title="Bad request", detail=str(exception))
    logger.exception("unhandled error on %s %s", request.method, request.path)
    return problem_response(
        status=500,
        slug="internal-error",
        title="Internal server error",
        detail="An unexpected error occurred.",
    )
