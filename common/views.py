"""Django's error handlers, answering problem+json instead of HTML."""

from django.http import HttpRequest, HttpResponse

from common.errors import problem_response


def bad_request(request: HttpRequest, exception: Exception | None = None) -> HttpResponse:
    return problem_response(status=400, slug="bad-request", title="Bad request")


def permission_denied(request: HttpRequest, exception: Exception | None = None) -> HttpResponse:
    return problem_response(status=403, slug="forbidden", title="Forbidden")


def page_not_found(request: HttpRequest, exception: Exception | None = None) -> HttpResponse:
    return problem_response(status=404, slug="not-found", title="Not found", detail="No such resource.")


def server_error(request: HttpRequest) -> HttpResponse:
    return problem_response(
        status=500,
        slug="internal-error",
        title="Internal server error",
        detail="An unexpected error occurred.",
    )


def csrf_failure(request: HttpRequest, reason: str = "") -> HttpResponse:
    """CSRF_FAILURE_VIEW: a rejected admin form post answers problem+json, not Django's HTML page."""
    return problem_response(
        status=403,
        slug="csrf-failed",
        title="CSRF verification failed",
        detail=reason or "CSRF verification failed.",
    )
