"""Slow and hostile clients cost nothing (issue 9 item 2), and SIGTERM drains, on the real server."""

from __future__ import annotations

import os
import signal
import socket
import statistics
import time

import pytest
import requests

from tests.gateway.proxy_support import proxy_route, server_pids
from tests.server.raw import address, assert_problem, exchange, read_until_closed
from tests.support.servers import Reply

pytestmark = pytest.mark.django_db(transaction=True)


def _latencies(url: str, count: int) -> list[float]:
    session = requests.Session()
    out = []
    for _ in range(count):
        started = time.perf_counter()
        assert session.get(url, timeout=5).status_code == 200
        out.append(time.perf_counter() - started)
    session.close()
    return out


def test_150_half_sent_heads_do_not_delay_anyone_and_are_closed_after_the_header_timeout(
    http_server_factory, gateway_process_factory
):
    upstream = http_server_factory()
    proxy_route(upstream.url, path="/t/**")
    gateway = gateway_process_factory({"WEB_HEADER_TIMEOUT": "2"})
    url = f"{gateway}/gw/t/x"
    _latencies(url, 10)  # warm both workers
    before = _latencies(url, 40)

    hostile = []
    for _ in range(150):
        sock = socket.create_connection(address(gateway), timeout=5)
        sock.sendall(b"GET /gw/t/x HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ")  # and never more
        hostile.append(sock)
    opened = time.monotonic()
    during = _latencies(url, 40)

    assert statistics.median(during) < 0.05 and max(during) < 0.2, (before, during)
    # each is answered 408 and closed once the header timeout (2 s) is over, not before
    for sock in hostile:
        answer = read_until_closed(sock, timeout=max(0.1, opened + 6 - time.monotonic()))
        assert_problem(answer, 408)
        sock.close()
    assert time.monotonic() - opened >= 1.5


def test_trickling_a_head_does_not_extend_the_header_timeout(gateway_process_factory):
    gateway = gateway_process_factory({"WEB_HEADER_TIMEOUT": "1"})
    sock = socket.create_connection(address(gateway), timeout=5)
    started = time.monotonic()
    closed_after = None
    for byte in b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-A: aaaaaaaaaaaaaaaaaaaaaaaa":
        try:
            sock.sendall(bytes([byte]))
        except OSError:
            closed_after = time.monotonic() - started
            break
        sock.settimeout(0.1)
        try:
            if sock.recv(65536):
                closed_after = time.monotonic() - started
                break
        except TimeoutError:
            pass
    sock.close()
    assert closed_after is not None and closed_after < 2.5


def test_a_slow_body_is_cut_off_after_the_body_timeout(http_server_factory, gateway_process_factory):
    upstream = http_server_factory()
    proxy_route(upstream.url, path="/t/**")
    gateway = gateway_process_factory({"WEB_BODY_TIMEOUT": "1"})
    for path in (b"/api/payments/events", b"/gw/t/x"):
        started = time.monotonic()
        answer = exchange(
            gateway,
            b"POST " + path + b" HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 100\r\n\r\n0123456789",
            timeout=6,
        )
        assert_problem(answer, 408)
        assert 0.8 < time.monotonic() - started < 4
    assert upstream.requests == []


def test_over_capacity_is_answered_503_at_once(gateway_process_factory):
    gateway = gateway_process_factory({"WEB_WORKERS": "1", "WEB_MAX_CONNECTIONS": "20"})
    idle = [socket.create_connection(address(gateway), timeout=5) for _ in range(25)]
    time.sleep(0.2)  # let the server accept them (a real server, not a clock to control)
    try:
        started = time.monotonic()
        answer = exchange(gateway, b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n", timeout=5)
        elapsed = time.monotonic() - started
        problem = assert_problem(answer, 503)
        assert b"retry-after: 1" in answer.lower() and problem["type"].endswith("/service-unavailable")
        assert elapsed < 1
    finally:
        for sock in idle:
            sock.close()
    deadline = time.monotonic() + 5  # once they are gone, requests are served again
    while requests.get(f"{gateway}/healthz", timeout=5).status_code != 200:
        assert time.monotonic() < deadline
        time.sleep(0.05)


def test_sigterm_lets_a_request_in_flight_finish_and_refuses_new_connections(
    http_server_factory, gateway_process_factory
):
    upstream = http_server_factory(lambda request: Reply(200, b"slow", delay=1.0))
    proxy_route(upstream.url, path="/t/**", timeout_ms=5000)
    gateway = gateway_process_factory()
    host, port = address(gateway)
    parent = min(server_pids(port))

    sock = socket.create_connection((host, port), timeout=5)
    sock.sendall(b"GET /gw/t/x HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
    time.sleep(0.3)  # the request is at the upstream now
    os.kill(parent, signal.SIGTERM)
    refused_after = None
    deadline = time.monotonic() + 2  # the supervisor looks at signals twice a second
    while refused_after is None and time.monotonic() < deadline:
        try:
            socket.create_connection((host, port), timeout=1).close()
        except ConnectionRefusedError:
            refused_after = time.monotonic()
        else:
            time.sleep(0.05)
    assert refused_after is not None, "new connections still accepted after SIGTERM"
    answer = read_until_closed(sock, timeout=5)
    sock.close()
    assert answer.startswith(b"HTTP/1.1 200") and answer.endswith(b"slow"), answer[:200]
    assert b"connection: close" in answer.lower()
