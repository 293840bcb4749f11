"""DRF exception handler: every API error leaves as problem+json."""

from __future__ import annotations

import logging
from typing import Any

from django.core.exceptions import PermissionDenied as DjangoPermissionDenied
from django.http import Http404, HttpResponse
from rest_framework import exceptions as drf

from common.errors import ApplicationError, problem_response

logger = logging.getLogger(__name__)

_DRF_SLUGS: dict[type[drf.APIException], tuple[str, str]] = {
    drf.ParseError: ("malformed-request", "Malformed request"),
    drf.AuthenticationFailed: ("not-authenticated", "Authentication required"),
    drf.NotAuthenticated: ("not-authenticated", "Authentication required"),
    drf.PermissionDenied: ("forbidden", "Forbidden"),
    drf.NotFound: ("not-found", "Not found"),
    drf.MethodNotAllowed: ("method-not-allowed", "Method not allowed"),
    drf.NotAcceptable: ("not-acceptable", "Not acceptable"),
    drf.UnsupportedMediaType: ("unsupported-media-type", "Unsupported media type"),
    drf.Throttled: ("rate-limited", "Too many requests"),
}


def _flatten_detail(detail: Any) -> Any:
    if isinstance(detail, dict):
        return {key: _flatten_detail(value) for key, value in detail.items()}
    if isinstance(detail, list):
        return [_flatten_detail(value) for value in detail]
    return str(detail)


def problem_exception_handler(exc: Exception, context: dict[str, Any]) -> HttpResponse | None:
    if isinstance(exc, ApplicationError):
        return exc.to_response()
    if isinstance(exc, Http404):
        exc = drf.NotFound()
    elif isinstance(exc, DjangoPermissionDenied):
        exc = drf.PermissionDenied()
    if isinstance(exc, drf.ValidationError):
        return problem_response(
            status=400,
            slug="validation-error",
            title="Validation failed",
            detail="The request body has invalid fields.",
            errors=_flatten_detail(exc.detail)
            if isinstance(exc.detail, dict)
            else {"non_field_errors": _flatten_detail(exc.detail)},
        )
    if isinstance(exc, drf.APIException):
        slug, title = _DRF_SLUGS.get(type(exc), ("error", "Error"))
        for klass, pair in _DRF_SLUGS.items():
            if isinstance(exc, klass):
                slug, title = pair
                break
        headers: dict[str, str] = {}
        if isinstance(exc, drf.NotAuthenticated | drf.AuthenticationFailed):
            headers["WWW-Authenticate"] = (
                'Bearer error="invalid_token"' if isinstance(exc, drf.AuthenticationFailed) else "Bearer"
            )
        if isinstance(exc, drf.MethodNotAllowed):
            view = context.get("view")
            if view is not None:
                headers["Allow"] = ", ".join(view.allowed_methods)
        if getattr(exc, "wait", None):
            headers["Retry-After"] = str(int(exc.wait))
        detail = exc.detail if isinstance(exc.detail, str) else _flatten_detail(exc.detail)
        return problem_response(
            status=exc.status_code, slug=slug, title=title, detail=str(detail), headers=headers
        )
    return None  # unexpected: the middleware logs it and answers a 500 problem
