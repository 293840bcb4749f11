"""Domain errors and the one problem+json shape (RFC 9457) every error of ours takes."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from django.conf import settings
from django.http import HttpResponse

from common.correlation import get_correlation_id

PROBLEM_CONTENT_TYPE = "application/problem+json"


def problem_type(slug: str) -> str:
    return f"{settings.PROBLEM_TYPE_BASE}{slug}"


class ApplicationError(Exception):
    """Base of every domain error; subclasses set status, slug and title."""

    status: int = 400
    slug: str = "bad-request"
    title: str = "Bad request"

    def __init__(
        self,
        detail: str | None = None,
        *,
        errors: Mapping[str, Any] | None = None,
        headers: Mapping[str, str] | None = None,
        status: int | None = None,
        extra: Mapping[str, Any] | None = None,
    ) -> None:
        self.detail = detail or self.title
        self.errors = dict(errors) if errors else None
        self.headers = dict(headers) if headers else {}
        if status is not None:
            self.status = status
        self.extra = dict(extra) if extra else {}
        super().__init__(self.detail)

    def to_response(self) -> HttpResponse:
        return problem_response(
            status=self.status,
            slug=self.slug,
            title=self.title,
            detail=self.detail,
            errors=self.errors,
            headers=self.headers,
            extra=self.extra,
        )


class ValidationFailed(ApplicationError):
    status, slug, title = 400, "validation-error", "Validation failed"


class NotAuthenticated(ApplicationError):
    status, slug, title = 401, "not-authenticated", "Authentication required"

    def __init__(self, detail: str | None = None, *, error: str | None = "invalid_token", **kw: Any):
        challenge = "Bearer" if error is None else f'Bearer error="{error}"'
        headers = {"WWW-Authenticate": challenge, **kw.pop("headers", {})}
        super().__init__(detail, headers=headers, **kw)


class PermissionDenied(ApplicationError):
    status, slug, title = 403, "forbidden", "Forbidden"


class NotFound(ApplicationError):
    status, slug, title = 404, "not-found", "Not found"


class Conflict(ApplicationError):
    status, slug, title = 409, "conflict", "Conflict"


class PayloadTooLarge(ApplicationError):
    status, slug, title = 413, "payload-too-large", "Request body too large"


class Unprocessable(ApplicationError):
    status, slug, title = 422, "unprocessable", "Unprocessable request"


class ServiceUnavailable(ApplicationError):
    status, slug, title = 503, "service-unavailable", "Service unavailable"


def problem_body(
    *,
    status: int,
    slug: str,
    title: str,
    detail: str = "",
    errors: Mapping[str, Any] | None = None,
    extra: Mapping[str, Any] | None = None,
    correlation_id: str | None = None,
) -> bytes:
    body: dict[str, Any] = {
        "type": problem_type(slug),
        "title": title,
        "status": status,
        "detail": detail or title,
        "correlation_id": correlation_id or get_correlation_id(),
    }
    if errors:
        body["errors"] = errors
    if extra:
        body.update(extra)
    return json.dumps(body, separators=(",", ":"), default=str).encode()


def problem_response(
    *,
    status: int,
    slug: str,
    title: str,
    detail: str = "",
    errors: Mapping[str, Any] | None = None,
    headers: Mapping[str, str] | None = None,
    extra: Mapping[str, Any] | None = None,
) -> HttpResponse:
    response = HttpResponse(
        problem_body(status=status, slug=slug, title=title, detail=detail, errors=errors, extra=extra),
        status=status,
        content_type=PROBLEM_CONTENT_TYPE,
    )
    for name, value in (headers or {}).items():
        response[name] = value
    return response
