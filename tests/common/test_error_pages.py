"""Errors Django produces itself (no route, bad Host, a crash outside DRF, CSRF) are problem+json.

SPEC §2: no HTML error page, no stack trace, ever — with DEBUG on too (Django would otherwise
answer with its technical pages: URL patterns, settings, tracebacks).
"""

import pytest
from django.test import Client

pytestmark = [pytest.mark.django_db, pytest.mark.urls("tests.common.faults")]

LEAKS = (b"Traceback", b"urlpatterns", b"URLconf", b"ALLOWED_HOSTS", b"secret detail", b"<html")


@pytest.fixture(params=[False, True], ids=["debug-off", "debug-on"])
def debug(request, settings):
    settings.DEBUG = request.param
    settings.MIDDLEWARE = [*settings.MIDDLEWARE, "tests.common.faults.ExplodingMiddleware"]
    return request.param


@pytest.fixture
def web():
    # The test client would re-raise a crash; a real server answers it.
    return Client(raise_request_exception=False)


def assert_problem(response, status: int, correlation_id: str) -> dict:
    assert response.status_code == status, response.content[:300]
    assert response["Content-Type"] == "application/problem+json", response.content[:300]
    for leak in LEAKS:
        assert leak not in response.content
    body = response.json()
    assert body["status"] == status
    assert body["correlation_id"] == correlation_id
    assert response["X-Correlation-ID"] == correlation_id
    return body


def test_no_route_is_problem_json(debug, web):
    response = web.get("/no-such-thing", HTTP_X_CORRELATION_ID="nf-1")

    body = assert_problem(response, 404, "nf-1")
    assert body["type"].endswith("/not-found")


def test_disallowed_host_is_problem_json(debug, web):
    response = web.get("/healthz", HTTP_HOST="evil.example", HTTP_X_CORRELATION_ID="host-1")

    body = assert_problem(response, 400, "host-1")
    assert body["type"].endswith("/bad-request")


@pytest.mark.parametrize("path", ["/boom", "/boom-in-middleware"], ids=["in-view", "in-middleware"])
def test_crash_outside_drf_is_problem_json(debug, web, path):
    response = web.get(path, HTTP_X_CORRELATION_ID="crash-1")

    body = assert_problem(response, 500, "crash-1")
    assert body["type"].endswith("/internal-error")
    assert body["detail"] == "An unexpected error occurred."


def test_error_pages_of_a_debug_run_are_logged_once(settings, web, caplog):
    settings.DEBUG = True
    settings.MIDDLEWARE = [*settings.MIDDLEWARE, "tests.common.faults.ExplodingMiddleware"]

    web.get("/boom-in-middleware")

    crash_lines = [record for record in caplog.records if record.name == "django.request"]
    assert len(crash_lines) == 1
    assert crash_lines[0].exc_info is not None  # the traceback goes to the log, not the client


def test_csrf_failure_is_problem_json():
    admin_form = Client(enforce_csrf_checks=True)

    response = admin_form.post(
        "/admin/login/", {"username": "admin", "password": "x"}, HTTP_X_CORRELATION_ID="csrf-1"
    )

    body = assert_problem(response, 403, "csrf-1")
    assert body["type"].endswith("/csrf-failed")
    assert "CSRF" in body["detail"]
