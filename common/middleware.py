"""Correlation id and problem+json for everything outside DRF (404, 500, …)."""

from __future__ import annotations

import logging
from collections.abc import Callable

from django.conf import settings
from django.core.exceptions import PermissionDenied, RequestDataTooBig, SuspiciousOperation
from django.http import Http404, HttpRequest, HttpResponse

from common.correlation import accept_correlation_id, reset_correlation_id, set_correlation_id
from common.errors import ApplicationError, problem_response

logger = logging.getLogger("gatehouse.errors")
CORRELATION_HEADER = "X-Correlation-ID"


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


class ProblemDetailsMiddleware:
    """Turns uncaught exceptions and Django's HTML error pages into problem+json."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        return self.get_response(request)

    def process_exception(self, request: HttpRequest, exception: Exception) -> HttpResponse | None:
        return exception_to_problem(request, exception)


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
