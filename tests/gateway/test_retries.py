"""Retries (SPEC §3 "Time and retries") and the per-target circuit breaker."""

from __future__ import annotations

import itertools
import time

import pytest

from tests.gateway.proxy_support import proxy_route
from tests.support.servers import Reply, free_port

pytestmark = pytest.mark.django_db(transaction=True)


def replies(*sequence: Reply):
    """A handler answering with `sequence`, then repeating its last reply."""
    items = itertools.chain(sequence, itertools.repeat(sequence[-1]))
    return lambda request: next(items)


def send(gw, method: str, path: str, **extra):
    return gw.generic(method, path, data=b"payload", content_type="text/plain", **extra)


@pytest.mark.parametrize("method", ["GET", "HEAD", "OPTIONS", "PUT", "DELETE"])
def test_idempotent_methods_are_retried_on_503(gw, http_server_factory, method):
    upstream = http_server_factory(replies(Reply(503, b"busy"), Reply(200, b"fine")))
    proxy_route(upstream.url, path="/r", retry_count=2)

    response = send(gw, method, "/gw/r")

    assert response.status_code == 200
    assert len(upstream.requests) == 2


@pytest.mark.parametrize("status", [502, 504])
def test_get_is_retried_on_502_and_504(gw, http_server_factory, status):
    upstream = http_server_factory(replies(Reply(status), Reply(200, b"fine")))
    proxy_route(upstream.url, path="/r", retry_count=1)

    assert gw.get("/gw/r").status_code == 200
    assert len(upstream.requests) == 2


def test_get_is_retried_when_the_upstream_drops_the_connection(gw, http_server_factory):
    upstream = http_server_factory(replies(Reply(close=True), Reply(200, b"fine")))
    proxy_route(upstream.url, path="/r", retry_count=1)

    response = gw.get("/gw/r")

    assert response.status_code == 200
    assert response.content == b"fine"
    assert len(upstream.requests) == 2


def test_retries_stop_at_retry_count_and_the_last_answer_is_passed_on(gw, http_server_factory):
    upstream = http_server_factory(replies(Reply(503, b"still busy")))
    proxy_route(upstream.url, path="/r", retry_count=2)

    response = gw.get("/gw/r")

    assert response.status_code == 503
    assert response.content == b"still busy"
    assert len(upstream.requests) == 3  # one call and two retries


def test_other_statuses_are_not_retried(gw, http_server_factory):
    upstream = http_server_factory(replies(Reply(500, b"bug")))
    proxy_route(upstream.url, path="/r", retry_count=2)

    assert gw.get("/gw/r").status_code == 500
    assert len(upstream.requests) == 1


@pytest.mark.parametrize("method", ["POST", "PATCH"])
@pytest.mark.parametrize(
    ("reply", "status"),
    [(Reply(close=True), 502), (Reply(503, b"busy"), 503)],
    ids=["closed-after-reading", "answered-503"],
)
def test_unsafe_method_is_not_retried_once_sent(gw, http_server_factory, method, reply, status):
    upstream = http_server_factory(replies(reply, Reply(200, b"would be a second effect")))
    proxy_route(upstream.url, path="/r", retry_count=2)

    response = send(gw, method, "/gw/r")

    assert response.status_code == status
    assert len(upstream.requests) == 1
    assert upstream.requests[0].body == b"payload"  # it was received: repeating could double it


@pytest.mark.parametrize("method", ["POST", "PATCH"])
def test_unsafe_method_is_retried_when_refused_before_sending(gw, http_server_factory, method):
    # given: a service whose first target refuses connections; round-robin makes one of two
    # requests start on it
    live = http_server_factory(lambda request: Reply(201, b"created"))
    proxy_route(f"http://127.0.0.1:{free_port()}", live.url, path="/r", retry_count=1)

    # when
    statuses = [send(gw, method, "/gw/r").status_code for _ in range(2)]

    # then: the refused attempt moved to the other target; each request reached it exactly once
    assert statuses == [201, 201]
    assert len(live.requests) == 2


def test_without_retries_the_refused_request_fails(gw, http_server_factory):
    live = http_server_factory(lambda request: Reply(201, b"created"))
    proxy_route(f"http://127.0.0.1:{free_port()}", live.url, path="/r", retry_count=0)

    statuses = sorted(send(gw, "POST", "/gw/r").status_code for _ in range(2))

    assert statuses == [201, 502]


@pytest.mark.parametrize("first", [Reply(503, b"busy"), Reply(close=True)], ids=["503", "closed"])
def test_post_with_idempotency_key_is_retried(gw, http_server_factory, first):
    upstream = http_server_factory(replies(first, Reply(201, b"created")))
    proxy_route(upstream.url, path="/r", retry_count=2)

    response = send(gw, "POST", "/gw/r", HTTP_IDEMPOTENCY_KEY="key-1")

    assert response.status_code == 201
    assert len(upstream.requests) == 2
    assert all(seen.header("Idempotency-Key") == "key-1" for seen in upstream.requests)


# --- Circuit breaker --------------------------------------------------------------------------
# The breaker's clock is the server process's: a server with a short reset time (3 s) instead of
# a frozen clock. Retry-After counts down the seconds left, rounded up.

CIRCUIT_RESET_SECONDS = 3


def circuit_env(failures: int) -> dict[str, str]:
    return {
        "GATEWAY_CIRCUIT_FAILURES": str(failures),
        "GATEWAY_CIRCUIT_RESET_SECONDS": str(CIRCUIT_RESET_SECONDS),
    }


def is_gateway_problem(response, slug: str) -> bool:
    return response["Content-Type"] == "application/problem+json" and response.json()["type"].endswith(
        "/" + slug
    )


def test_circuit_opens_after_consecutive_failures_and_half_opens_later(gw_server, http_server_factory):
    gw = gw_server(circuit_env(3))
    healthy = [False]
    upstream = http_server_factory(lambda request: Reply(200, b"back") if healthy[0] else Reply(503, b"down"))
    proxy_route(upstream.url, path="/flaky", retry_count=0)
    gw.sync()

    # three failures pass through as the upstream's own answer
    for _ in range(3):
        response = gw.get("/gw/flaky", HTTP_X_CORRELATION_ID="c-1")
        assert response.status_code == 503 and response.content == b"down"
    opened = time.monotonic()
    # then the gateway answers itself, without calling the upstream
    refused = gw.get("/gw/flaky", HTTP_X_CORRELATION_ID="c-1")
    assert refused.status_code == 503
    assert is_gateway_problem(refused, "upstream-unavailable")
    assert refused.json()["correlation_id"] == "c-1"
    assert refused["Retry-After"] == str(CIRCUIT_RESET_SECONDS)
    assert len(upstream.requests) == 3

    time.sleep(max(0.0, opened + 1.2 - time.monotonic()))
    later = gw.get("/gw/flaky")
    assert is_gateway_problem(later, "upstream-unavailable")
    assert later["Retry-After"] in ("1", "2")  # counting down
    assert len(upstream.requests) == 3

    # half-open: one probe goes through; its success closes the circuit
    healthy[0] = True
    time.sleep(max(0.0, opened + CIRCUIT_RESET_SECONDS + 0.2 - time.monotonic()))
    assert gw.get("/gw/flaky").content == b"back"
    assert gw.get("/gw/flaky").content == b"back"
    assert len(upstream.requests) == 5


def test_failed_probe_opens_the_circuit_again(gw_server, http_server_factory):
    gw = gw_server(circuit_env(2))
    upstream = http_server_factory(lambda request: Reply(503, b"down"))
    proxy_route(upstream.url, path="/flaky", retry_count=0)
    gw.sync()

    gw.get("/gw/flaky")
    gw.get("/gw/flaky")
    opened = time.monotonic()
    time.sleep(CIRCUIT_RESET_SECONDS + 0.2)
    assert gw.get("/gw/flaky").content == b"down"  # the probe, failing
    again = gw.get("/gw/flaky")

    assert time.monotonic() - opened < 2 * CIRCUIT_RESET_SECONDS  # still within the new opening
    assert is_gateway_problem(again, "upstream-unavailable")
    assert again["Retry-After"] == str(CIRCUIT_RESET_SECONDS)
    assert len(upstream.requests) == 3


def test_open_target_is_skipped_for_a_closed_one(gw_server, http_server_factory):
    gw = gw_server(circuit_env(2))
    live = http_server_factory(lambda request: Reply(200, b"live"))
    proxy_route(f"http://127.0.0.1:{free_port()}", live.url, path="/two", retry_count=0)

    first = [gw.get("/gw/two").status_code for _ in range(4)]  # the dead target fails twice
    after = [gw.get("/gw/two").status_code for _ in range(6)]

    assert first.count(502) == 2
    assert after == [200] * 6  # never sent to the open target, no retry needed
