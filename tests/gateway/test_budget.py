"""`timeout_ms` is one budget for the whole request, retries and backoff included."""

from __future__ import annotations

import contextlib
import socket
import threading
import time

import pytest

from tests.gateway.proxy_support import proxy_route
from tests.support.servers import Reply

pytestmark = pytest.mark.django_db(transaction=True)


def timed_get(gw, path: str):
    gw.sync()  # the route is seen before the clock starts
    started = time.monotonic()
    response = gw.get(path)
    return response, time.monotonic() - started


def test_slow_upstream_is_504_within_the_budget_not_per_attempt(gw, http_server_factory):
    upstream = http_server_factory(lambda request: Reply(200, b"late", delay=2.5))
    proxy_route(upstream.url, path="/slow", timeout_ms=2000, retry_count=2)

    response, elapsed = timed_get(gw, "/gw/slow")

    assert response.status_code == 504
    assert response["Content-Type"] == "application/problem+json"
    assert response.json()["type"].endswith("/gateway-timeout")
    assert 1.8 <= elapsed <= 3.0  # about 2 s, never 3 × 2.5 s
    assert len(upstream.requests) == 1  # no time was left for a retry


def test_upstream_within_the_budget_is_served(gw, http_server_factory):
    upstream = http_server_factory(lambda request: Reply(200, b"in time", delay=1.5))
    proxy_route(upstream.url, path="/slow", timeout_ms=2000, retry_count=2)

    response, elapsed = timed_get(gw, "/gw/slow")

    assert response.status_code == 200
    assert response.content == b"in time"
    assert elapsed >= 1.5


def test_retries_and_backoff_never_outlast_the_budget(gw, http_server_factory):
    upstream = http_server_factory(lambda request: Reply(503, b"busy", delay=0.4))
    proxy_route(upstream.url, path="/busy", timeout_ms=1000, retry_count=10)

    response, elapsed = timed_get(gw, "/gw/busy")

    assert response.status_code in (503, 504)
    assert elapsed <= 1.7
    assert 1 <= len(upstream.requests) <= 3  # 10 retries were allowed, the budget was not


def test_post_that_times_out_is_504_and_not_repeated(gw, http_server_factory):
    upstream = http_server_factory(lambda request: Reply(201, b"late", delay=1.5))
    proxy_route(upstream.url, path="/slow", timeout_ms=500, retry_count=2)

    gw.sync()
    started = time.monotonic()
    response = gw.post("/gw/slow", data=b"{}", content_type="application/json")

    assert response.status_code == 504
    assert time.monotonic() - started < 1.4
    assert len(upstream.requests) == 1


class TricklingUpstream:
    """A raw HTTP upstream on 127.0.0.1: answers each request with `fast` at once, then `slow` one
    byte every `interval` seconds (http.server cannot trickle a status line or headers)."""

    def __init__(self, *, fast: bytes, slow: bytes, interval: float = 0.1) -> None:
        self.fast, self.slow, self.interval = fast, slow, interval
        self.requests = 0
        self._stop = threading.Event()
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.settimeout(0.1)
        self.url = f"http://127.0.0.1:{self._listener.getsockname()[1]}"
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                connection, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            threading.Thread(target=self._answer, args=(connection,), daemon=True).start()

    def _answer(self, connection: socket.socket) -> None:
        with connection, contextlib.suppress(OSError):
            received = b""
            while b"\r\n\r\n" not in received:
                chunk = connection.recv(65536)
                if not chunk:
                    return
                received += chunk
            self.requests += 1
            connection.sendall(self.fast)
            for byte in self.slow:
                if self._stop.wait(self.interval):
                    return
                connection.sendall(bytes([byte]))

    def close(self) -> None:
        self._stop.set()
        self._listener.close()


@pytest.fixture
def trickling_upstream():
    upstreams: list[TricklingUpstream] = []

    def start(**kwargs) -> TricklingUpstream:
        upstreams.append(TricklingUpstream(**kwargs))
        return upstreams[-1]

    yield start
    for upstream in upstreams:
        upstream.close()


HEAD = (
    b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n"
    + b"X-Padding: "
    + b"p" * 40
    + b"\r\nContent-Length: 40\r\n\r\n"
)


@pytest.mark.parametrize(
    ("fast", "slow"),
    [(b"", HEAD + b"b" * 40), (HEAD, b"b" * 40)],
    ids=["status-line-and-headers-trickle", "small-body-trickles"],
)
def test_an_upstream_trickling_its_answer_cannot_stretch_the_budget(gw, trickling_upstream, fast, slow):
    # given an upstream that would take 4-12 s, one byte every 100 ms, each well within a read timeout
    upstream = trickling_upstream(fast=fast, slow=slow, interval=0.1)
    proxy_route(upstream.url, path="/trickle", timeout_ms=1000, retry_count=2)

    # when
    response, elapsed = timed_get(gw, "/gw/trickle")

    # then the budget is a deadline: 504 after about 1 s
    assert response.status_code == 504
    assert response["Content-Type"] == "application/problem+json"
    assert response.json()["type"].endswith("/gateway-timeout")
    assert 0.9 <= elapsed < 1.8
    assert upstream.requests == 1  # a timeout is not retried: the budget is spent


def test_a_streamed_body_may_outlast_the_budget_while_chunks_keep_coming(gw, http_server_factory):
    # A large or unknown-length body streams: the budget covers the head, then each read may
    # wait up to what was left when the attempt started (docs/gateway-proxy.md).
    def slow_chunks():
        for index in range(6):
            time.sleep(0.3)
            yield b"chunk-%d;" % index

    upstream = http_server_factory(lambda request: Reply(200, slow_chunks()))
    proxy_route(upstream.url, path="/stream", timeout_ms=1000, retry_count=0)

    gw.sync()
    started = time.monotonic()
    response = gw.get("/gw/stream")
    body = response.content

    assert response.status_code == 200
    assert body == b"".join(b"chunk-%d;" % index for index in range(6))
    assert time.monotonic() - started >= 1.5  # longer than the 1 s budget, and that is fine
