"""The asynchronous upstream client (gateway.services.upstream) against real servers on 127.0.0.1.

Each test runs its coroutine on a fresh event loop (`asyncio.run`), so the per-loop pools are
exercised too. Raw socket servers record the request exactly as it arrived and misbehave on cue.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import socket
import threading
import time

import pytest
from django.test import override_settings

from gateway.services import circuit
from gateway.services.upstream import (
    BadGateway,
    CircuitOpen,
    GatewayTimeout,
    upstream_close,
    upstream_forward,
)
from gateway.services.upstream_errors import BUFFER_LIMIT_BYTES
from gateway.types import ResolvedRoute
from tests.gateway.proxy_support import status_kb
from tests.support.servers import Reply, free_port


def route(*targets: str, **fields) -> ResolvedRoute:
    fields.setdefault("timeout_ms", 3000)
    return ResolvedRoute(id=1, methods=("GET",), path="/t/**", service="svc", targets=targets, **fields)


def run(coro):
    """Run `coro` on a new loop, closing the pools it opened."""

    async def main():
        try:
            return await coro
        finally:
            await upstream_close()

    return asyncio.run(main())


def forward(target_route, method="GET", path="/a", query=b"", headers=None, body=b"", **extra):
    return upstream_forward(
        route=target_route,
        method=method,
        path=path,
        query_string=query,
        headers=[("Host", "")] + list(headers or []),
        body=body,
        idempotency_key=extra.pop("idempotency_key", False),
    )


async def read_all(answer) -> bytes:
    if answer.body is not None:
        return answer.body
    chunks = [chunk async for chunk in answer.stream]
    await answer.release()
    return b"".join(chunks)


def replies(*sequence: Reply):
    items = itertools.chain(sequence, itertools.repeat(sequence[-1]))
    return lambda request: next(items)


class RawServer:
    """A TCP server whose `behave(conn, data)` answers each connection after its request head.

    `data` is what was received so far: the head and whatever of the body came with it.

    `heads` holds every request head (bytes, as received); `closed_at` the monotonic time each
    connection was seen closed by the peer.
    """

    def __init__(self, behave):
        self.behave = behave
        self.heads: list[bytes] = []
        self.closed_at: list[float] = []
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.port = self.sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self._stop = False
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while not self._stop:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn):
        with conn:
            data = b""
            while b"\r\n\r\n" not in data:
                chunk = conn.recv(65536)
                if not chunk:
                    return
                data += chunk
            head = data.split(b"\r\n\r\n", 1)[0]
            self.heads.append(head)
            with contextlib.suppress(OSError):
                self.behave(conn, data)

    def wait_closed(self, conn) -> None:
        """Block until the peer closes `conn`; record when."""
        conn.settimeout(10)
        with contextlib.suppress(OSError):
            while conn.recv(65536):
                pass
        self.closed_at.append(time.monotonic())

    def close(self):
        self._stop = True
        self.sock.close()


@pytest.fixture
def raw_server():
    servers = []

    def start(behave):
        server = RawServer(behave)
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.close()


def ok(conn, head):
    conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")


# --- forwarding ------------------------------------------------------------------------------


def test_a_get_is_forwarded_and_its_small_answer_buffered(http_server_factory):
    upstream = http_server_factory(
        lambda request: Reply(
            200,
            b"hello",
            headers=[("Set-Cookie", "a=1"), ("Set-Cookie", "b=2"), ("Connection", "x-hop"), ("X-Hop", "1")],
        )
    )

    answer = run(forward(route(upstream.url), headers=[("X-Client", "yes")]))

    assert (answer.status, answer.reason, answer.body, answer.stream) == (200, "OK", b"hello", None)
    assert [v for n, v in answer.headers if n == "Set-Cookie"] == ["a=1", "b=2"]
    assert not {"connection", "x-hop"} & {n.lower() for n, _ in answer.headers}
    (seen,) = upstream.requests
    assert seen.header("Host") == f"127.0.0.1:{upstream.port}"
    assert seen.header("X-Client") == "yes"


def test_no_header_is_added_that_the_caller_did_not_give(raw_server):
    server = raw_server(ok)

    run(forward(route(server.url), headers=[("X-Only", "1")]))

    lines = server.heads[0].split(b"\r\n")[1:]
    names = sorted(line.split(b":")[0].lower() for line in lines)
    assert names == [b"host", b"x-only"]


def test_a_host_given_by_the_caller_is_kept(http_server_factory):
    upstream = http_server_factory()

    run(
        upstream_forward(
            route=route(upstream.url),
            method="GET",
            path="/a",
            query_string="",
            headers=[("Host", "api.internal"), ("Accept", "*/*")],
            body=b"",
            idempotency_key=False,
        )
    )

    assert upstream.requests[0].header("Host") == "api.internal"


def test_path_and_query_reach_the_upstream_byte_for_byte(raw_server):
    server = raw_server(ok)

    run(forward(route(server.url + "/base"), path="/a%2Fb/%7e/x;p=1", query=b"tilde=%7e&a=%2F&b=+"))

    request_line = server.heads[0].split(b"\r\n")[0]
    assert request_line == b"GET /base/a%2Fb/%7e/x;p=1?tilde=%7e&a=%2F&b=+ HTTP/1.1"


def test_a_str_query_string_is_sent_unchanged_too(raw_server):
    server = raw_server(ok)

    run(forward(route(server.url), path="/s", query="tilde=%7e&x=%zz&&y"))

    assert server.heads[0].split(b"\r\n")[0] == b"GET /s?tilde=%7e&x=%zz&&y HTTP/1.1"


def test_a_request_body_is_sent_with_its_length(http_server_factory):
    upstream = http_server_factory(lambda request: Reply(201, request.body[::-1]))

    answer = run(forward(route(upstream.url), method="POST", body=b"payload"))

    assert (answer.status, answer.body) == (201, b"daolyap")
    assert upstream.requests[0].header("Content-Length") == "7"


def test_a_post_without_body_says_content_length_0(raw_server):
    server = raw_server(ok)

    run(forward(route(server.url), method="POST"))

    assert b"\r\nContent-Length: 0" in server.heads[0]


def test_redirects_are_passed_on_not_followed(http_server_factory):
    upstream = http_server_factory(lambda request: Reply(302, b"", headers=[("Location", "/elsewhere")]))

    answer = run(forward(route(upstream.url)))

    assert answer.status == 302
    assert ("Location", "/elsewhere") in answer.headers
    assert len(upstream.requests) == 1


def test_a_compressed_answer_is_passed_on_compressed(http_server_factory):
    import gzip

    packed = gzip.compress(b"x" * 1000)
    upstream = http_server_factory(lambda request: Reply(200, packed, headers=[("Content-Encoding", "gzip")]))

    answer = run(forward(route(upstream.url), headers=[("Accept-Encoding", "gzip")]))

    assert answer.body == packed


def test_cookies_of_one_answer_are_not_sent_with_the_next_request(http_server_factory):
    upstream = http_server_factory(lambda request: Reply(200, b"", headers=[("Set-Cookie", "sid=1; Path=/")]))

    async def twice():
        await forward(route(upstream.url))
        await forward(route(upstream.url))

    run(twice())

    assert upstream.requests[1].header("Cookie") is None


def test_connections_are_kept_alive_between_requests(raw_server):
    def keep_alive(conn, head):
        ok(conn, head)
        data = b""
        while b"\r\n\r\n" not in data:  # the second request on the same connection
            chunk = conn.recv(65536)
            if not chunk:
                return
            data += chunk
        server.heads.append(data.split(b"\r\n\r\n")[0])
        ok(conn, data)

    server = raw_server(keep_alive)

    async def twice():
        await forward(route(server.url), path="/one")
        await forward(route(server.url), path="/two")

    run(twice())

    assert [h.split(b" ")[1] for h in server.heads] == [b"/one", b"/two"]


def test_pools_work_on_several_event_loops_one_after_the_other(http_server_factory):
    upstream = http_server_factory()

    assert run(forward(route(upstream.url))).status == 200
    assert run(forward(route(upstream.url))).status == 200


# --- failures, retries, the budget -----------------------------------------------------------


def test_get_is_retried_on_503(http_server_factory):
    upstream = http_server_factory(replies(Reply(503, b"busy"), Reply(200, b"fine")))

    answer = run(forward(route(upstream.url, retry_count=2)))

    assert (answer.status, answer.body, len(upstream.requests)) == (200, b"fine", 2)


def test_retries_stop_at_retry_count_and_the_last_answer_is_passed_on(http_server_factory):
    upstream = http_server_factory(replies(Reply(503, b"still busy")))

    answer = run(forward(route(upstream.url, retry_count=2)))

    assert (answer.status, answer.body, len(upstream.requests)) == (503, b"still busy", 3)


def test_post_is_not_retried_on_503(http_server_factory):
    upstream = http_server_factory(replies(Reply(503, b"busy"), Reply(200, b"fine")))

    answer = run(forward(route(upstream.url, retry_count=2), method="POST", body=b"x"))

    assert (answer.status, len(upstream.requests)) == (503, 1)


def test_post_with_an_idempotency_key_is_retried_on_503(http_server_factory):
    upstream = http_server_factory(replies(Reply(503, b"busy"), Reply(200, b"fine")))

    answer = run(forward(route(upstream.url, retry_count=2), method="POST", body=b"x", idempotency_key=True))

    assert (answer.status, len(upstream.requests)) == (200, 2)


def test_post_is_retried_on_the_next_target_when_the_connection_is_refused(http_server_factory):
    upstream = http_server_factory(lambda request: Reply(200, request.body))
    refused = f"http://127.0.0.1:{free_port()}"

    # Whichever target the rotation starts on, the refused one is passed over.
    for _ in range(2):
        answer = run(forward(route(refused, upstream.url, retry_count=1), method="POST", body=b"once"))
        assert (answer.status, answer.body) == (200, b"once")
    assert all(r.body == b"once" for r in upstream.requests)


def test_refused_everywhere_is_502(http_server_factory):
    with pytest.raises(BadGateway):
        run(forward(route(f"http://127.0.0.1:{free_port()}", retry_count=1)))


def test_post_is_not_retried_when_the_upstream_drops_the_connection(http_server_factory):
    upstream = http_server_factory(replies(Reply(close=True), Reply(200, b"fine")))

    with pytest.raises(BadGateway):
        run(forward(route(upstream.url, retry_count=2), method="POST", body=b"x"))
    assert len(upstream.requests) == 1


def test_get_is_retried_when_the_upstream_drops_the_connection(http_server_factory):
    upstream = http_server_factory(replies(Reply(close=True), Reply(200, b"fine")))

    answer = run(forward(route(upstream.url, retry_count=1)))

    assert (answer.status, answer.body) == (200, b"fine")


def test_an_invalid_status_line_is_502(raw_server):
    server = raw_server(lambda conn, head: conn.sendall(b"NOT HTTP AT ALL\r\n\r\n"))

    with pytest.raises(BadGateway):
        run(forward(route(server.url, retry_count=0)))


def test_a_head_trickled_one_byte_a_second_is_504_at_the_budget(raw_server):
    def trickle(conn, head):
        for byte in b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok":
            conn.sendall(bytes([byte]))
            time.sleep(1)

    server = raw_server(trickle)
    started = time.monotonic()

    with pytest.raises(GatewayTimeout):
        run(forward(route(server.url, timeout_ms=1500, retry_count=2)))

    assert 1.4 < time.monotonic() - started < 3.5  # the budget, not one read timeout per byte
    assert len(server.heads) == 1  # a spent budget is not retried


def test_the_budget_covers_every_attempt(http_server_factory):
    upstream = http_server_factory(replies(Reply(503, b"busy", delay=0.4)))

    answer_or_error = None
    try:
        answer_or_error = run(forward(route(upstream.url, timeout_ms=1000, retry_count=10)))
    except GatewayTimeout as exc:
        answer_or_error = exc

    # At most ~1 s of 0.4 s attempts: never the 11 attempts the retry count would allow.
    assert len(upstream.requests) <= 3
    assert answer_or_error is not None


def test_circuit_opens_after_consecutive_failures_and_answers_503_with_retry_after(http_server_factory):
    upstream = http_server_factory(replies(Reply(503, b"busy")))
    target_route = route(upstream.url, retry_count=0)

    with override_settings(GATEWAY_CIRCUIT_FAILURES=2, GATEWAY_CIRCUIT_RESET_SECONDS=30):
        run(forward(target_route))
        run(forward(target_route))
        with pytest.raises(CircuitOpen) as caught:
            run(forward(target_route))

    assert len(upstream.requests) == 2
    assert 1 <= int(caught.value.headers["Retry-After"]) <= 30


def test_the_circuit_is_the_one_the_sync_proxy_uses(http_server_factory):
    upstream = http_server_factory()
    with override_settings(GATEWAY_CIRCUIT_FAILURES=1):
        circuit.circuit_record_failure(target=upstream.url)

    with pytest.raises(CircuitOpen):
        run(forward(route(upstream.url)))
    assert upstream.requests == []


def test_a_route_without_targets_is_503():
    with pytest.raises(CircuitOpen):
        run(forward(route()))


# --- streaming -------------------------------------------------------------------------------


def test_a_large_answer_streams_in_bounded_chunks(http_server_factory):
    payload = bytes(range(256)) * (BUFFER_LIMIT_BYTES // 256 + 100)
    upstream = http_server_factory(lambda request: Reply(200, payload))

    async def go():
        answer = await forward(route(upstream.url))
        assert answer.body is None
        sizes = []
        async for chunk in answer.stream:
            sizes.append(len(chunk))
        await answer.release()
        await answer.release()  # idempotent
        return sizes

    sizes = run(go())
    assert sum(sizes) == len(payload)
    assert max(sizes) <= 64 * 1024


def test_an_answer_without_length_streams(http_server_factory):
    upstream = http_server_factory(lambda request: Reply(200, iter([b"a" * 10, b"b" * 10])))

    async def go():
        answer = await forward(route(upstream.url))
        assert answer.body is None
        return await read_all(answer)

    assert run(go()) == b"a" * 10 + b"b" * 10


def read_chunked(conn, already: bytes) -> bytes:
    """A chunked request body, decoded (`already`: what came after the head)."""
    data, body = already, b""
    while True:
        while b"\r\n" not in data:
            data += conn.recv(65536)
        size_line, data = data.split(b"\r\n", 1)
        size = int(size_line, 16)
        while len(data) < size + 2:
            data += conn.recv(65536)
        if size == 0:
            return body
        body, data = body + data[:size], data[size + 2 :]


def test_a_request_body_given_as_an_async_iterator_is_streamed_chunked(raw_server):
    bodies = []

    def echo(conn, head):
        bodies.append(read_chunked(conn, head.split(b"\r\n\r\n", 1)[1]))
        ok(conn, head)

    server = raw_server(echo)

    async def parts():
        for part in (b"one,", b"two,", b"three"):
            await asyncio.sleep(0)
            yield part

    answer = run(forward(route(server.url), method="PUT", body=parts()))

    assert answer.status == 200
    assert bodies == [b"one,two,three"]
    assert b"\r\nTransfer-Encoding: chunked" in server.heads[0]
    assert b"content-length" not in server.heads[0].lower()


def test_a_streamed_request_body_with_its_length_is_sent_unchunked(http_server_factory):
    upstream = http_server_factory(lambda request: Reply(200, request.body))

    async def parts():
        yield b"12345"
        yield b"67890"

    answer = run(
        upstream_forward(
            route=route(upstream.url),
            method="POST",
            path="/p",
            query_string=b"",
            headers=[("Host", ""), ("Content-Length", "10")],
            body=parts(),
            idempotency_key=False,
        )
    )

    assert answer.body == b"1234567890"
    assert upstream.requests[0].header("Transfer-Encoding") is None


# --- cancellation ----------------------------------------------------------------------------


def test_cancelled_while_waiting_for_the_head_closes_the_upstream_connection(raw_server):
    arrived = threading.Event()

    def hang(conn, head):
        arrived.set()
        server.wait_closed(conn)

    server = raw_server(hang)

    async def go():
        task = asyncio.create_task(forward(route(server.url)))
        while not arrived.is_set():
            await asyncio.sleep(0.01)
        cancelled_at = time.monotonic()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        return cancelled_at

    cancelled_at = run(go())
    deadline = time.monotonic() + 2
    while not server.closed_at and time.monotonic() < deadline:
        time.sleep(0.01)
    assert server.closed_at and server.closed_at[0] - cancelled_at < 0.1


def test_cancelled_while_streaming_closes_the_upstream_connection_and_release_stays_safe(raw_server):
    def one_chunk_then_hang(conn, data):
        conn.sendall(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nfirst\r\n")
        server.wait_closed(conn)

    server = raw_server(one_chunk_then_hang)

    async def go():
        answer = await forward(route(server.url))
        first = await anext(answer.stream)
        reader = asyncio.create_task(anext(answer.stream))
        await asyncio.sleep(0.05)
        cancelled_at = time.monotonic()
        reader.cancel()
        with pytest.raises(asyncio.CancelledError):
            await reader
        await answer.release()
        await answer.release()
        return first, cancelled_at

    first, cancelled_at = run(go())
    deadline = time.monotonic() + 2
    while not server.closed_at and time.monotonic() < deadline:
        time.sleep(0.01)
    assert first == b"first"
    assert server.closed_at and server.closed_at[0] - cancelled_at < 0.1


def test_a_stream_released_half_read_closes_its_connection(raw_server):
    def one_chunk_then_hang(conn, data):
        conn.sendall(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nfirst\r\n")
        server.wait_closed(conn)

    server = raw_server(one_chunk_then_hang)

    async def go():
        answer = await forward(route(server.url))
        await anext(answer.stream)
        released_at = time.monotonic()
        await answer.release()
        return released_at

    released_at = run(go())
    deadline = time.monotonic() + 2
    while not server.closed_at and time.monotonic() < deadline:
        time.sleep(0.01)
    assert server.closed_at and server.closed_at[0] - released_at < 0.1


def test_a_cancelled_half_open_probe_frees_the_slot(raw_server):
    arrived = threading.Event()

    def hang(conn, data):
        arrived.set()
        server.wait_closed(conn)

    server = raw_server(hang)
    with override_settings(GATEWAY_CIRCUIT_FAILURES=1, GATEWAY_CIRCUIT_RESET_SECONDS=0.05):
        circuit.circuit_record_failure(target=server.url)
    time.sleep(0.1)  # half-open: the next request is the one probe

    async def go():
        task = asyncio.create_task(forward(route(server.url)))
        while not arrived.is_set():
            await asyncio.sleep(0.01)
        assert not circuit.circuit_allow(target=server.url)  # the probe is in flight
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    run(go())
    assert circuit.circuit_allow(target=server.url)  # released: another probe may go


def test_a_50_mib_stream_keeps_memory_bounded_and_pushes_back_on_the_upstream(raw_server):
    total = 50 * 1024 * 1024
    sent = []

    def blast(conn, data):
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % total)
        block = b"x" * (1024 * 1024)
        for _ in range(total // len(block)):
            conn.sendall(block)
            sent.append(len(block))

    server = raw_server(blast)
    pid = os.getpid()

    async def go():
        answer = await forward(route(server.url))
        assert answer.body is None
        start_rss = status_kb(pid, "VmRSS")
        received = len(await anext(answer.stream))
        await asyncio.sleep(0.5)  # a slow client: the upstream must be held back meanwhile
        sent_while_paused = sum(sent)
        peak = status_kb(pid, "VmRSS")
        async for chunk in answer.stream:
            received += len(chunk)
            if received % (4 * 1024 * 1024) < len(chunk):
                peak = max(peak, status_kb(pid, "VmRSS"))
        await answer.release()
        return received, sent_while_paused, peak - start_rss

    received, sent_while_paused, growth_kb = run(go())
    assert received == total
    # Socket buffers plus the client's bounded buffer, not the 50 MiB that was sent.
    assert sent_while_paused < 16 * 1024 * 1024
    assert growth_kb < 24 * 1024


def test_attempts_retries_and_opened_circuits_are_counted(http_server_factory):
    from prometheus_client import REGISTRY

    def sample(name, **labels):
        return REGISTRY.get_sample_value(name, labels) or 0.0

    upstream = http_server_factory(replies(Reply(503, b"busy"), Reply(200, b"fine")))
    target_route = ResolvedRoute(
        id=2, methods=("GET",), path="/m", service="metrics-svc", targets=(upstream.url,), retry_count=1
    )
    before = {
        "503": sample("gateway_upstream_latency_seconds_count", service="metrics-svc", outcome="503"),
        "200": sample("gateway_upstream_latency_seconds_count", service="metrics-svc", outcome="200"),
        "retries": sample("gateway_upstream_retries_total", service="metrics-svc"),
        "refused": sample(
            "gateway_upstream_latency_seconds_count", service="metrics-svc", outcome="connect_error"
        ),
        "opened": sample("gateway_circuit_opened_total", service="metrics-svc"),
    }

    run(forward(target_route))
    refused_route = ResolvedRoute(
        id=3,
        methods=("GET",),
        path="/m",
        service="metrics-svc",
        targets=(f"http://127.0.0.1:{free_port()}",),
        retry_count=0,
    )
    with override_settings(GATEWAY_CIRCUIT_FAILURES=1), pytest.raises(BadGateway):
        run(forward(refused_route))

    assert (
        sample("gateway_upstream_latency_seconds_count", service="metrics-svc", outcome="503")
        == before["503"] + 1
    )
    assert (
        sample("gateway_upstream_latency_seconds_count", service="metrics-svc", outcome="200")
        == before["200"] + 1
    )
    assert sample("gateway_upstream_retries_total", service="metrics-svc") == before["retries"] + 1
    assert (
        sample("gateway_upstream_latency_seconds_count", service="metrics-svc", outcome="connect_error")
        == before["refused"] + 1
    )
    assert sample("gateway_circuit_opened_total", service="metrics-svc") == before["opened"] + 1


def test_a_streamed_body_may_outlast_the_budget_while_data_keeps_coming(raw_server):
    def slow_chunks(conn, data):
        conn.sendall(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
        for _ in range(5):
            time.sleep(0.3)
            conn.sendall(b"4\r\ndata\r\n")
        conn.sendall(b"0\r\n\r\n")

    server = raw_server(slow_chunks)

    async def go():
        answer = await forward(route(server.url, timeout_ms=1000))
        return await read_all(answer)

    assert run(go()) == b"data" * 5  # ~1.5 s of body under a 1 s budget


def test_a_streamed_body_that_stalls_past_the_budget_is_a_timeout(raw_server):
    def stall(conn, data):
        conn.sendall(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n4\r\ndata\r\n")
        server.wait_closed(conn)

    server = raw_server(stall)

    async def go():
        answer = await forward(route(server.url, timeout_ms=500))
        assert await anext(answer.stream) == b"data"
        with pytest.raises(GatewayTimeout):
            await anext(answer.stream)
        await answer.release()

    run(go())
    deadline = time.monotonic() + 2
    while not server.closed_at and time.monotonic() < deadline:
        time.sleep(0.01)
    assert server.closed_at  # the stalled connection was closed, not pooled


def test_a_streamed_request_body_is_never_replayed(http_server_factory):
    upstream = http_server_factory(replies(Reply(close=True), Reply(200, b"fine")))

    async def parts():
        yield b"only once"

    with pytest.raises(BadGateway):
        run(
            upstream_forward(
                route=route(upstream.url, retry_count=2),
                method="PUT",
                path="/p",
                query_string=b"",
                headers=[("Host", ""), ("Content-Length", "9")],
                body=parts(),
                idempotency_key=False,
            )
        )
    assert len(upstream.requests) == 1


def test_upstream_close_closes_the_pooled_connections(raw_server):
    def keep_open(conn, data):
        ok(conn, data)
        server.wait_closed(conn)

    server = raw_server(keep_open)

    async def go():
        await forward(route(server.url))
        await asyncio.sleep(0.05)
        assert server.closed_at == []  # kept alive in the pool
        await upstream_close()
        return time.monotonic()

    closed_at = asyncio.run(go())
    deadline = time.monotonic() + 2
    while not server.closed_at and time.monotonic() < deadline:
        time.sleep(0.01)
    assert server.closed_at and server.closed_at[0] - closed_at < 0.5


def test_a_retry_moves_on_to_the_next_target(http_server_factory):
    failing = http_server_factory(lambda request: Reply(503, b"busy"))
    healthy = http_server_factory(lambda request: Reply(200, b"fine"))
    target_route = route(failing.url, healthy.url, retry_count=1)

    # Two requests start on two different targets (round robin): one starts on the failing one.
    answers = [run(forward(target_route)) for _ in range(2)]

    assert [a.body for a in answers] == [b"fine", b"fine"]
    assert (len(failing.requests), len(healthy.requests)) == (1, 2)


@pytest.mark.parametrize(("method", "status"), [("HEAD", 200), ("GET", 204), ("GET", 304)])
def test_bodiless_answers_are_buffered_and_the_connection_reused(raw_server, method, status):
    reason = {200: b"OK", 204: b"No Content", 304: b"Not Modified"}[status]
    answer_head = b'HTTP/1.1 %d %s\r\nContent-Length: 999999\r\nETag: "e"\r\n\r\n' % (status, reason)
    if status == 204:
        answer_head = answer_head.replace(b"Content-Length: 999999\r\n", b"")

    def two(conn, data):
        conn.sendall(answer_head)
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = conn.recv(65536)
            if not chunk:
                return
            data += chunk
        server.heads.append(data.split(b"\r\n\r\n")[0])
        conn.sendall(answer_head)

    server = raw_server(two)

    async def go():
        first = await forward(route(server.url), method=method)
        second = await forward(route(server.url), method=method)
        return first, second

    first, second = run(go())
    assert (first.status, first.body, first.stream) == (status, b"", None)
    assert second.status == status
    assert len(server.heads) == 2  # both on the one kept-alive connection


def answer_once_then_drop(server):
    """Answer the first request of a connection; read the next one and close without a word."""

    def behave(conn, data):
        ok(conn, data)
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = conn.recv(65536)
            if not chunk:
                return
            data += chunk
        server.heads.append(data.split(b"\r\n\r\n")[0])

    return behave


def test_a_get_on_a_pooled_connection_closed_as_it_went_out_is_sent_again_at_once(raw_server):
    server = None
    server = raw_server(lambda conn, data: answer_once_then_drop(server)(conn, data))

    async def go():
        first = await forward(route(server.url, retry_count=0), path="/one")
        second = await forward(route(server.url, retry_count=0), path="/two")
        return first.status, second.status, second.body

    assert run(go()) == (200, 200, b"ok")
    assert [h.split(b" ")[1] for h in server.heads] == [b"/one", b"/two", b"/two"]


def test_a_post_on_a_pooled_connection_closed_as_it_went_out_is_not_sent_again(raw_server):
    server = None
    server = raw_server(lambda conn, data: answer_once_then_drop(server)(conn, data))

    async def go():
        await forward(route(server.url, retry_count=2), method="POST", body=b"x")
        with pytest.raises(BadGateway):
            await forward(route(server.url, retry_count=2), method="POST", body=b"y")

    run(go())
    assert len(server.heads) == 2
