"""Logs are JSON lines carrying the correlation id (SPEC §7), and the id never outlives its request.

Lines are captured from the handler that settings.LOGGING configures (its JSON formatter and
correlation filter), by pointing its stream at a buffer for the test.
"""

import contextvars
import io
import json
import logging

import pytest
from django.test import Client

from common.correlation import get_correlation_id
from common.logging import CorrelationIdFilter, JsonFormatter
from gateway import asgi as gateway_asgi
from tests.support.asgi_driver import Lifespan, asgi_request, on_a_loop

pytestmark = pytest.mark.django_db


@pytest.fixture
def log_lines():
    """Returns a function giving the JSON lines written so far by the configured console handler."""
    handlers = [
        handler
        for handler in logging.getLogger().handlers
        if isinstance(handler.formatter, JsonFormatter)
        and any(isinstance(f, CorrelationIdFilter) for f in handler.filters)
    ]
    assert len(handlers) == 1, "settings.LOGGING should give the root logger one JSON handler"
    handler = handlers[0]
    buffer = io.StringIO()
    previous = handler.setStream(buffer)
    try:
        yield lambda: [json.loads(line) for line in buffer.getvalue().splitlines()]
    finally:
        handler.setStream(previous)


@pytest.mark.urls("tests.common.faults")
def test_log_lines_of_a_request_are_json_with_its_correlation_id(log_lines):
    # given a plain Django view that crashes (logged by the error middleware and by Django)
    web = Client(raise_request_exception=False)

    # when
    response = web.get("/boom", HTTP_X_CORRELATION_ID="log-corr-1")

    # then the client gets problem+json with the id …
    assert response.status_code == 500
    assert response["Content-Type"] == "application/problem+json"
    assert response.json()["correlation_id"] == "log-corr-1"
    # … and every line logged meanwhile is JSON carrying the same id, the traceback included
    lines = log_lines()
    assert lines, "the crash should have been logged"
    assert {line["correlation_id"] for line in lines} == {"log-corr-1"}
    crash = next(line for line in lines if line["logger"] == "gatehouse.errors")
    assert crash["level"] == "ERROR"
    assert "unhandled error on GET /boom" in crash["message"]
    assert "Boom" in crash["exc_info"]


@pytest.mark.urls("tests.common.faults")
def test_log_lines_of_a_django_request_carry_the_trace_id_it_continued(log_lines):
    web = Client(raise_request_exception=False)

    response = web.get("/boom", HTTP_TRACEPARENT="00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")

    assert response.status_code == 500
    lines = log_lines()
    assert any(line["logger"] == "gatehouse.errors" for line in lines)
    assert {line["trace_id"] for line in lines} == {"4bf92f3577b34da6a3ce929d0e0e4736"}


def _gateway_request(path: str, **headers: str):  # noqa: ANN202
    """One request to the production `/gw` application (gateway/asgi.py), in this process."""
    return asgi_request(gateway_asgi.application, "GET", path, headers=list(headers.items()))


@pytest.mark.django_db(transaction=True)
def test_unexpected_error_in_the_lean_gateway_entrance_is_problem_json_and_logged(monkeypatch, log_lines):
    async def crash(ctx, gate):  # noqa: ANN001, ANN202
        raise RuntimeError("a bug in the pipeline")

    monkeypatch.setattr(gateway_asgi, "gateway_pipeline", crash)

    async def main():  # noqa: ANN202
        async with Lifespan(gateway_asgi.application):
            return await _gateway_request("/gw/anything", **{"X-Correlation-ID": "lean-corr-1"})

    response = on_a_loop(main())

    assert response.status == 500
    assert response.header("Content-Type") == "application/problem+json"
    assert response.header("X-Correlation-ID") == "lean-corr-1"
    problem = json.loads(response.body)
    assert problem["correlation_id"] == "lean-corr-1"
    assert b"a bug in the pipeline" not in response.body and b"Traceback" not in response.body
    crash_line = next(line for line in log_lines() if line["logger"] == "gatehouse.gateway")
    assert crash_line["correlation_id"] == "lean-corr-1"
    assert "RuntimeError" in crash_line["exc_info"]


def in_fresh_context(work):  # type: ignore[no-untyped-def]
    """Run `work` in an empty context: whatever earlier tests left in this thread cannot interfere."""
    return contextvars.Context().run(work)


def test_correlation_id_does_not_leak_between_requests_through_django(client, log_lines):
    def work():
        first = client.get("/healthz", HTTP_X_CORRELATION_ID="first-request")
        second = client.get("/healthz")
        logging.getLogger("tests.after").warning("written after the requests")
        return first, second, get_correlation_id()

    first, second, current = in_fresh_context(work)

    assert first["X-Correlation-ID"] == "first-request"
    assert second["X-Correlation-ID"] != "first-request"
    assert len(second["X-Correlation-ID"]) == 32  # a new one was minted
    assert current == ""
    after = [line for line in log_lines() if line["logger"] == "tests.after"]
    assert after == [after[0]] and after[0]["correlation_id"] == ""


@pytest.mark.django_db(transaction=True)
def test_correlation_id_does_not_leak_between_requests_through_the_lean_gateway(log_lines):
    async def main():  # noqa: ANN202
        async with Lifespan(gateway_asgi.application):
            # both requests awaited in this one task: anything a request left set shows here
            first = await _gateway_request("/gw/no-route", **{"X-Correlation-ID": "first-gw-request"})
            second = await _gateway_request("/gw/no-route")
            logging.getLogger("tests.after").warning("written after the requests")
            return first, second, get_correlation_id()

    first, second, current = on_a_loop(main())

    assert first.status == second.status == 404
    assert first.header("X-Correlation-ID") == "first-gw-request"
    assert json.loads(first.body)["correlation_id"] == "first-gw-request"
    assert second.header("X-Correlation-ID") not in (None, "", "first-gw-request")
    assert json.loads(second.body)["correlation_id"] == second.header("X-Correlation-ID")
    assert current == ""
    after = [line for line in log_lines() if line["logger"] == "tests.after"]
    assert after[0]["correlation_id"] == ""
