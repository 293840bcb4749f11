"""Retries (SPEC §3 "Time and retries") and the per-target circuit breaker."""

from __future__ import annotations

import itertools

import pytest
from django.test import override_settings
from freezegun import freeze_time

from tests.gateway.proxy_support import proxy_route
from tests.support.servers import Reply, free_port

pytestmark = pytest.mark.django_db


def replies(*sequence: Reply):
    """A handler answering with `sequence`, then repeating its last reply."""
    items = itertools.chain(sequence, itertools.repeat(sequence[-1]))
    return lambda request: next(items)


def send(client, method: str, path: str, **extra):
    return client.generic(method, path, data=b"payload", content_type="text/plain", **extra)


@pytest.mark.parametrize("method", ["GET", "HEAD", "OPTIONS", "PUT", "DELETE"])
def test_idempotent_methods_are_retried_on_503(client, http_server_factory, method):
    upstream = http_server_factory(replies(Reply(503, b"busy"), Reply(200, b"fine")))
    proxy_route(upstream.url, path="/r", retry_count=2)

    response = send(client, method, "/gw/r")

    assert response.status_code == 200
    assert len(upstream.requests) == 2


@pytest.mark.parametrize("status", [502, 504])
def test_get_is_retried_on_502_and_504(client, http_server_factory, status):
    upstream = http_server_factory(replies(Reply(status), Reply(200, b"fine")))
    proxy_route(upstream.url, path="/r", retry_count=1)

    assert client.get("/gw/r").status_code == 200
    assert len(upstream.requests) == 2


def test_get_is_retried_when_the_upstream_drops_the_connection(client, http_server_factory):
    upstream = http_server_factory(replies(Reply(close=True), Reply(200, b"fine")))
    proxy_route(upstream.url, path="/r", retry_count=1)

    response = client.get("/gw/r")

    assert response.status_code == 200
    assert response.content == b"fine"
    assert len(upstream.requests) == 2


def test_retries_stop_at_retry_count_and_the_last_answer_is_passed_on(client, http_server_factory):
    upstream = http_server_factory(replies(Reply(503, b"still busy")))
    proxy_route(upstream.url, path="/r", retry_count=2)

    response = client.get("/gw/r")

    assert response.status_code == 503
    assert response.content == b"still busy"
    assert len(upstream.requests) == 3  # one call and two retries


def test_other_statuses_are_not_retried(client, http_server_factory):
    upstream = http_server_factory(replies(Reply(500, b"bug")))
    proxy_route(upstream.url, path="/r", retry_count=2)

    assert client.get("/gw/r").status_code == 500
    assert len(upstream.requests) == 1


@pytest.mark.parametrize("method", ["POST", "PATCH"])
@pytest.mark.parametrize(
    ("reply", "status"),
    [(Reply(close=True), 502), (Reply(503, b"busy"), 503)],
    ids=["closed-after-reading", "answered-503"],
)
def test_unsafe_method_is_not_retried_once_sent(client, http_server_factory, method, reply, status):
    upstream = http_server_factory(replies(reply, Reply(200, b"would be a second effect")))
    proxy_route(upstream.url, path="/r", retry_count=2)

    response = send(client, method, "/gw/r")

    assert response.status_code == status
    assert len(upstream.requests) == 1
    assert upstream.requests[0].body == b"payload"  # it was received: repeating could double it


@pytest.mark.parametrize("method", ["POST", "PATCH"])
def test_unsafe_method_is_retried_when_refused_before_sending(client, http_server_factory, method):
    # given: a service whose first target refuses connections; round-robin makes one of two
    # requests start on it
    live = http_server_factory(lambda request: Reply(201, b"created"))
    proxy_route(f"http://127.0.0.1:{free_port()}", live.url, path="/r", retry_count=1)

    # when
    statuses = [send(client, method, "/gw/r").status_code for _ in range(2)]

    # then: the refused attempt moved to the other target; each request reached it exactly once
    assert statuses == [201, 201]
    assert len(live.requests) == 2


def test_without_retries_the_refused_request_fails(client, http_server_factory):
    live = http_server_factory(lambda request: Reply(201, b"created"))
    proxy_route(f"http://127.0.0.1:{free_port()}", live.url, path="/r", retry_count=0)

    statuses = sorted(send(client, "POST", "/gw/r").status_code for _ in range(2))

    assert statuses == [201, 502]


@pytest.mark.parametrize("first", [Reply(503, b"busy"), Reply(close=True)], ids=["503", "closed"])
def test_post_with_idempotency_key_is_retried(client, http_server_factory, first):
    upstream = http_server_factory(replies(first, Reply(201, b"created")))
    proxy_route(upstream.url, path="/r", retry_count=2)

    response = send(client, "POST", "/gw/r", HTTP_IDEMPOTENCY_KEY="key-1")

    assert response.status_code == 201
    assert len(upstream.requests) == 2
    assert all(seen.header("Idempotency-Key") == "key-1" for seen in upstream.requests)


# --- Circuit breaker --------------------------------------------------------------------------


def is_gateway_problem(response, slug: str) -> bool:
    return response["Content-Type"] == "application/problem+json" and response.json()["type"].endswith(
        "/" + slug
    )


@override_settings(GATEWAY_CIRCUIT_FAILURES=3, GATEWAY_CIRCUIT_RESET_SECONDS=30)
def test_circuit_opens_after_consecutive_failures_and_half_opens_later(client, http_server_factory):
    healthy = [False]
    upstream = http_server_factory(lambda request: Reply(200, b"back") if healthy[0] else Reply(503, b"down"))
    proxy_route(upstream.url, path="/flaky", retry_count=0)

    with freeze_time("2026-01-01 00:00:00") as clock:
        # three failures pass through as the upstream's own answer
        for _ in range(3):
            response = client.get("/gw/flaky", HTTP_X_CORRELATION_ID="c-1")
            assert response.status_code == 503 and response.content == b"down"
        # then the gateway answers itself, without calling the upstream
        refused = client.get("/gw/flaky", HTTP_X_CORRELATION_ID="c-1")
        assert refused.status_code == 503
        assert is_gateway_problem(refused, "upstream-unavailable")
        assert refused.json()["correlation_id"] == "c-1"
        assert refused["Retry-After"] == "30"
        assert len(upstream.requests) == 3

        clock.tick(20)
        assert client.get("/gw/flaky")["Retry-After"] == "10"
        assert len(upstream.requests) == 3

        # half-open: one probe goes through; its success closes the circuit
        healthy[0] = True
        clock.tick(11)
        assert client.get("/gw/flaky").content == b"back"
        assert client.get("/gw/flaky").content == b"back"
        assert len(upstream.requests) == 5


@override_settings(GATEWAY_CIRCUIT_FAILURES=2, GATEWAY_CIRCUIT_RESET_SECONDS=30)
def test_failed_probe_opens_the_circuit_again(client, http_server_factory):
    upstream = http_server_factory(lambda request: Reply(503, b"down"))
    proxy_route(upstream.url, path="/flaky", retry_count=0)

    with freeze_time("2026-01-01 00:00:00") as clock:
        client.get("/gw/flaky")
        client.get("/gw/flaky")
        clock.tick(31)
        assert client.get("/gw/flaky").content == b"down"  # the probe, failing
        again = client.get("/gw/flaky")

    assert is_gateway_problem(again, "upstream-unavailable")
    assert again["Retry-After"] == "30"
    assert len(upstream.requests) == 3


@override_settings(GATEWAY_CIRCUIT_FAILURES=2, GATEWAY_CIRCUIT_RESET_SECONDS=30)
def test_open_target_is_skipped_for_a_closed_one(client, http_server_factory):
    live = http_server_factory(lambda request: Reply(200, b"live"))
    proxy_route(f"http://127.0.0.1:{free_port()}", live.url, path="/two", retry_count=0)

    first = [client.get("/gw/two").status_code for _ in range(4)]  # the dead target fails twice
    after = [client.get("/gw/two").status_code for _ in range(6)]

    assert first.count(502) == 2
    assert after == [200] * 6  # never sent to the open target, no retry needed
