"""The asyncio /gw pipeline's behaviours through the real server (gateway/services/pipeline.py):
correlation id, problem+json answers, idempotent replays, repeated headers, the body limit."""

from __future__ import annotations

import uuid

import pytest
import requests

from tests.gateway.proxy_support import proxy_route
from tests.server.raw import exchange
from tests.support.servers import Reply

pytestmark = pytest.mark.django_db(transaction=True)


def test_the_correlation_id_is_kept_when_valid_minted_otherwise_and_on_every_answer(
    http_server_factory, gateway_process_factory
):
    upstream = http_server_factory(
        lambda request: Reply(200, b"ok", headers=[("X-Correlation-ID", "theirs")])
    )
    proxy_route(upstream.url, path="/t/**")
    gateway = gateway_process_factory()

    kept = requests.get(f"{gateway}/gw/t/x", headers={"X-Request-ID": "abc-123"}, timeout=10)
    minted = requests.get(f"{gateway}/gw/t/x", headers={"X-Correlation-ID": "bad id"}, timeout=10)
    missing = requests.get(f"{gateway}/gw/nothing-here", headers={"X-Correlation-ID": "c-404"}, timeout=10)

    assert kept.headers["X-Correlation-ID"] == "abc-123"
    assert upstream.requests[0].header("X-Correlation-ID") == "abc-123"
    assert len(minted.headers["X-Correlation-ID"]) == 32
    assert minted.headers["X-Correlation-ID"] == upstream.requests[1].header("X-Correlation-ID")
    assert missing.status_code == 404
    assert missing.headers["Content-Type"] == "application/problem+json"
    assert missing.headers["X-Correlation-ID"] == "c-404"
    assert missing.json()["correlation_id"] == "c-404"


def test_repeated_response_headers_stay_repeated(http_server_factory, gateway_process_factory):
    upstream = http_server_factory(
        lambda request: Reply(200, b"ok", headers=[("Set-Cookie", "a=1"), ("Set-Cookie", "b=2")])
    )
    proxy_route(upstream.url, path="/t/**")
    gateway = gateway_process_factory()

    answer = exchange(gateway, b"GET /gw/t/x HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")

    head = answer.split(b"\r\n\r\n", 1)[0].lower()
    assert head.count(b"set-cookie: ") == 2
    assert b"set-cookie: a=1" in head and b"set-cookie: b=2" in head


def test_an_idempotent_replay_is_byte_identical_and_never_crosses_users(
    http_server_factory, gateway_process_factory, token_service
):
    upstream = http_server_factory(
        lambda request: Reply(201, uuid.uuid4().hex.encode(), headers=[("Content-Type", "text/plain")])
    )
    proxy_route(upstream.url, path="/pay/**", idempotency="required", auth_required=True)
    gateway = gateway_process_factory(token_service.env)
    alice = {"Authorization": token_service.bearer(sub="alice"), "Idempotency-Key": "k-1"}
    bob = {"Authorization": token_service.bearer(sub="bob"), "Idempotency-Key": "k-1"}

    first = requests.post(f"{gateway}/gw/pay/1", data=b"{}", headers=alice, timeout=10)
    again = requests.post(f"{gateway}/gw/pay/1", data=b"{}", headers=alice, timeout=10)
    other = requests.post(f"{gateway}/gw/pay/1", data=b"{}", headers=bob, timeout=10)
    reused = requests.post(f"{gateway}/gw/pay/1", data=b"{other}", headers=alice, timeout=10)

    assert first.status_code == again.status_code == 201
    assert again.content == first.content
    assert again.headers["Idempotent-Replayed"] == "true"
    assert again.headers["Content-Type"] == "text/plain"
    assert other.status_code == 201 and other.content != first.content
    assert "Idempotent-Replayed" not in other.headers
    assert reused.status_code == 409 and reused.headers["Content-Type"] == "application/problem+json"
    assert len(upstream.requests) == 2


def test_a_body_over_the_limit_is_413_and_a_cut_body_400_and_neither_is_forwarded(
    http_server_factory, gateway_process_factory
):
    upstream = http_server_factory()
    proxy_route(upstream.url, path="/t/**")
    gateway = gateway_process_factory({"GATEWAY_MAX_BODY_BYTES": "100"})

    declared = requests.post(f"{gateway}/gw/t/x", data=b"x" * 101, timeout=10)
    chunked = requests.post(f"{gateway}/gw/t/x", data=iter([b"x" * 60, b"x" * 60]), timeout=10)
    host = b"Host: 127.0.0.1\r\n"
    cut = exchange(
        gateway,
        b"POST /gw/t/x HTTP/1.1\r\n" + host + b"Content-Length: 50\r\n\r\n" + b"x" * 10,
        shut_write=True,
    )

    assert declared.status_code == chunked.status_code == 413
    assert declared.headers["Content-Type"] == "application/problem+json"
    # the client shut its side after 10 of 50 bytes: the body is incomplete (400 if it still reads)
    assert cut == b"" or cut.startswith(b"HTTP/1.1 400")
    assert upstream.requests == []
