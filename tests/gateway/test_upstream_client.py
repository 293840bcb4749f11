"""The gateway's HTTP/1.1 upstream client (gateway.upstream_client) against real sockets.

Every test runs on a fresh loop, the stdlib one and uvloop (production's), against asyncio
servers on 127.0.0.1 that answer, misbehave or hang on cue and count their connections.
"""

from __future__ import annotations

import asyncio
import contextlib

import pytest
import uvloop

from gateway.upstream_client import (
    Pool,
    UpstreamConnectError,
    UpstreamDisconnected,
    UpstreamProtocolError,
    UpstreamStaleConnection,
)
from gateway.upstream_client import connection as connection_module
from tests.support.servers import free_port

OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"


@pytest.fixture(params=["asyncio", "uvloop"])
def run(request):
    factory = None if request.param == "asyncio" else uvloop.new_event_loop

    def run(coro_fn):
        with asyncio.Runner(loop_factory=factory) as runner:
            return runner.run(coro_fn())

    run.kind = request.param
    return run


class Upstream:
    """An asyncio server calling `handler(self, reader, writer)` per connection."""

    def __init__(self, handler):
        self.handler = handler
        self.connections = 0
        self.open = 0
        self.peak_open = 0
        self.heads: list[bytes] = []
        self.eof_seen = asyncio.Event()

    async def __aenter__(self):
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]
        self.origin = f"http://127.0.0.1:{self.port}"
        return self

    async def __aexit__(self, *exc):
        self.server.close()
        with contextlib.suppress(Exception):
            async with asyncio.timeout(1):
                await self.server.wait_closed()

    async def _serve(self, reader, writer):
        self.connections += 1
        self.open += 1
        self.peak_open = max(self.peak_open, self.open)
        try:
            await self.handler(self, reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            self.open -= 1
            writer.close()

    async def head(self, reader) -> bytes | None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
        except asyncio.IncompleteReadError:
            return None
        self.heads.append(head)
        return head

    async def until_eof(self, reader) -> None:
        """Wait for the client to close the connection."""
        while await reader.read(65536):
            pass
        self.eof_seen.set()


async def answer_each(upstream, reader, writer, answer=OK):
    while await upstream.head(reader) is not None:
        writer.write(answer)
        await writer.drain()


def pool(upstream, size=8, keepalive=15.0) -> Pool:
    return Pool(asyncio.get_running_loop(), upstream.origin, size=size, keepalive=keepalive)


HOST = [("Host", "svc")]


async def exchange(p: Pool, method="GET", target="/", headers=HOST, body=None) -> bytes:
    """One request, its body read to the end, the connection released."""
    response = await p.request(method, target, headers, body)
    data = await response.read()
    response.release()
    return data


# --- requests as given ----------------------------------------------------------------------


def test_target_and_headers_go_out_exactly_as_given(run):
    async def go():
        async with Upstream(answer_each) as up:
            p = pool(up)
            headers = [("Host", "svc"), ("X-B", "1"), ("x-a", "2"), ("X-B", "3")]
            response = await p.request("GET", "/a%2Fb/%7e?tilde=%7e&x=%zz&&y", headers)
            assert (response.status, response.reason, await response.read()) == (200, "OK", b"ok")
            response.release()
            return up.heads[0]

    head = run(go)
    assert (
        head
        == b"GET /a%2Fb/%7e?tilde=%7e&x=%zz&&y HTTP/1.1\r\nHost: svc\r\nX-B: 1\r\nx-a: 2\r\nX-B: 3\r\n\r\n"
    )


def test_a_bytes_body_goes_out_in_one_write_with_its_length(run, monkeypatch):
    writes = []
    original = connection_module.Connection.connection_made

    class Counting:
        def __init__(self, transport):
            self._transport = transport

        def write(self, data):
            writes.append(bytes(data))
            self._transport.write(data)

        def __getattr__(self, name):
            return getattr(self._transport, name)

    def connection_made(self, transport):
        original(self, Counting(transport))

    monkeypatch.setattr(connection_module.Connection, "connection_made", connection_made)

    async def echo(upstream, reader, writer):
        await upstream.head(reader)
        body = await reader.readexactly(7)
        writer.write(b"HTTP/1.1 201 Created\r\nContent-Length: 7\r\n\r\n" + body[::-1])

    async def go():
        async with Upstream(echo) as up:
            response = await pool(up).request("POST", "/p", HOST, b"payload")
            return response.status, await response.read()

    assert run(go) == (201, b"daolyap")
    assert writes == [b"POST /p HTTP/1.1\r\nHost: svc\r\nContent-Length: 7\r\n\r\npayload"]


@pytest.mark.parametrize(("method", "expected"), [("POST", b"Content-Length: 0\r\n"), ("GET", b"")])
def test_an_empty_body_says_length_0_only_for_methods_with_content(run, method, expected):
    async def go():
        async with Upstream(answer_each) as up:
            response = await pool(up).request(method, "/", HOST, b"")
            await response.read()
            return up.heads[0]

    assert run(go) == method.encode() + b" / HTTP/1.1\r\nHost: svc\r\n" + expected + b"\r\n"


@pytest.mark.parametrize("bad", ["a\r\nX-Injected: 1", "a\nb", "a\rb"])
def test_a_cr_or_lf_in_a_header_value_is_refused(run, bad):
    async def go():
        async with Upstream(answer_each) as up:
            p = pool(up)
            with pytest.raises(ValueError):
                await p.request("GET", "/", [("Host", "svc"), ("X", bad)])
            assert p.count == 0
            assert up.heads == []

    run(go)


def test_a_space_in_the_target_is_refused(run):
    async def go():
        async with Upstream(answer_each) as up:
            with pytest.raises(ValueError):
                await pool(up).request("GET", "/a HTTP/1.0\r\n", HOST)

    run(go)


def read_chunked(data: bytes) -> bytes:
    body = b""
    while True:
        size_line, data = data.split(b"\r\n", 1)
        size = int(size_line, 16)
        if size == 0:
            return body
        body, data = body + data[:size], data[size + 2 :]


def test_a_streamed_body_goes_chunked_and_one_with_a_length_goes_raw(run):
    received = []

    async def collect(upstream, reader, writer):
        while (head := await upstream.head(reader)) is not None:
            if b"chunked" in head:
                data = await reader.readuntil(b"0\r\n\r\n")
                received.append(("chunked", read_chunked(data)))
            else:
                received.append(("length", await reader.readexactly(10)))
            writer.write(OK)

    async def parts():
        for part in (b"12345", b"", b"67890"):
            await asyncio.sleep(0)
            yield part

    async def go():
        async with Upstream(collect) as up:
            p = pool(up)
            await exchange(p, "PUT", "/c", HOST, parts())
            r = await p.request("PUT", "/l", [*HOST, ("Content-Length", "10")], parts())
            await r.read()
            r.release()
            return up.heads

    heads = run(go)
    assert received == [("chunked", b"1234567890"), ("length", b"1234567890")]
    assert heads[0] == b"PUT /c HTTP/1.1\r\nHost: svc\r\nTransfer-Encoding: chunked\r\n\r\n"
    assert heads[1] == b"PUT /l HTTP/1.1\r\nHost: svc\r\nContent-Length: 10\r\n\r\n"


def test_a_streamed_body_longer_than_its_length_is_refused_and_the_connection_closed(run):
    async def go():
        async with Upstream(lambda u, r, w: u.until_eof(r)) as up:
            p = pool(up)

            async def too_long():
                yield b"12345678901"

            with pytest.raises(UpstreamProtocolError):
                await p.request("PUT", "/", [*HOST, ("Content-Length", "10")], too_long())
            async with asyncio.timeout(2):
                await up.eof_seen.wait()
            assert p.count == 0

    run(go)


def test_a_streamed_body_waits_for_a_slow_reader(run):
    total = 32 * 1024 * 1024
    produced = []
    received_at_pause = []

    async def slow_reader(upstream, reader, writer):
        await upstream.head(reader)
        await asyncio.sleep(0.5)
        received_at_pause.append(sum(produced))
        data = bytearray()
        while not data.endswith(b"\r\n0\r\n\r\n"):
            data += await reader.read(1024 * 1024)
        assert len(read_chunked(bytes(data))) == total
        writer.write(OK)

    async def blocks():
        block = b"x" * (1024 * 1024)
        for _ in range(total // len(block)):
            produced.append(len(block))
            yield block

    async def go():
        async with Upstream(slow_reader) as up:
            response = await pool(up).request("PUT", "/", HOST, blocks())
            return response.status

    assert run(go) == 200
    # Socket buffers and the transport's high-water mark, not the 32 MiB the producer had.
    assert received_at_pause[0] < 16 * 1024 * 1024


# --- responses ------------------------------------------------------------------------------


def test_a_chunked_answer_is_decoded_whole_or_in_bounded_reads(run):
    answer = (
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nX-Tag: a\r\nX-Tag: b\r\n\r\n"
        b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n"
    )

    async def go():
        async with Upstream(lambda u, r, w: answer_each(u, r, w, answer)) as up:
            p = pool(up)
            whole = await p.request("GET", "/", HOST)
            body = await whole.read()
            assert [v for n, v in whole.headers if n == b"X-Tag"] == [b"a", b"b"]
            whole.release()
            parts = await p.request("GET", "/", HOST)
            pieces = []
            while piece := await parts.read(4):
                pieces.append(piece)
            assert parts.complete
            parts.release()
            return body, pieces, up.connections

    body, pieces, connections = run(go)
    assert body == b"hello world"
    assert b"".join(pieces) == b"hello world" and max(map(len, pieces)) <= 4
    assert connections == 1


def test_keep_alive_reuses_one_connection(run):
    async def go():
        async with Upstream(answer_each) as up:
            p = pool(up)
            for _ in range(5):
                response = await p.request("GET", "/", HOST)
                assert await response.read() == b"ok"
                response.release()
            return up.connections, p.count, p.idle_count

    assert run(go) == (1, 1, 1)


@pytest.mark.parametrize(
    "answer",
    [
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok",
        b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nok",
    ],
    ids=["connection-close", "http-1.0"],
)
def test_a_server_that_will_close_is_not_reused(run, answer):
    async def go():
        async with Upstream(lambda u, r, w: answer_each(u, r, w, answer)) as up:
            p = pool(up)
            for _ in range(2):
                response = await p.request("GET", "/", HOST)
                assert await response.read() == b"ok"
                response.release()
            return up.connections, p.idle_count

    assert run(go) == (2, 0)


def test_a_client_connection_close_is_honoured(run):
    async def go():
        async with Upstream(answer_each) as up:
            p = pool(up)
            response = await p.request("GET", "/", [*HOST, ("Connection", "close")])
            await response.read()
            response.release()
            async with asyncio.timeout(2):
                while up.open:
                    await asyncio.sleep(0.01)
            return p.count

    assert run(go) == 0


def test_an_http_1_0_body_without_length_is_read_until_close(run):
    async def once(upstream, reader, writer):
        await upstream.head(reader)
        writer.write(b"HTTP/1.0 200 OK\r\n\r\nfirst,")
        await writer.drain()
        await asyncio.sleep(0.05)
        writer.write(b"second")

    async def go():
        async with Upstream(once) as up:
            p = pool(up)
            response = await p.request("GET", "/", HOST)
            body = await response.read()
            response.release()
            return response.version, body, p.count

    assert run(go) == ("1.0", b"first,second", 0)


@pytest.mark.parametrize(("method", "status"), [("HEAD", 200), ("GET", 204), ("GET", 304)])
def test_bodiless_answers_end_at_their_head_and_keep_the_connection(run, method, status):
    head = b"HTTP/1.1 %d X\r\nContent-Length: 999\r\n\r\n" % status
    if status == 204:
        head = b"HTTP/1.1 204 No Content\r\n\r\n"

    async def go():
        async with Upstream(lambda u, r, w: answer_each(u, r, w, head)) as up:
            p = pool(up)
            for _ in range(2):
                response = await p.request(method, "/", HOST)
                assert response.status == status
                async with asyncio.timeout(1):
                    assert await response.read() == b""
                response.release()
            return up.connections

    assert run(go) == 1


def test_interim_100_continue_and_103_are_skipped(run):
    answer = (
        b"HTTP/1.1 100 Continue\r\n\r\n"
        b"HTTP/1.1 103 Early Hints\r\nLink: </s.css>\r\n\r\n"
        b"HTTP/1.1 201 Created\r\nContent-Length: 4\r\nX-Final: yes\r\n\r\ndone"
    )

    async def go():
        async with Upstream(lambda u, r, w: answer_each(u, r, w, answer)) as up:
            p = pool(up)
            response = await p.request("POST", "/", [*HOST, ("Expect", "100-continue")], b"x")
            return response.status, response.reason, response.headers, await response.read()

    assert run(go) == (201, "Created", [(b"Content-Length", b"4"), (b"X-Final", b"yes")], b"done")


# --- failures -------------------------------------------------------------------------------


def test_a_refused_connect_is_a_connect_error_and_frees_the_slot(run):
    async def go():
        p = Pool(asyncio.get_running_loop(), f"http://127.0.0.1:{free_port()}", size=1, keepalive=1)
        for _ in range(2):
            with pytest.raises(UpstreamConnectError):
                await p.request("GET", "/", HOST)
        return p.count

    assert run(go) == 0


@pytest.mark.parametrize(
    "answer",
    [
        b"NOT HTTP AT ALL\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: nope\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nTransfer-Encoding: chunked\r\n\r\n",
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: x\r\nConnection: upgrade\r\n\r\n",
    ],
    ids=["garbage", "bad-length", "length-and-chunked", "101"],
)
def test_a_malformed_answer_is_a_protocol_error_not_a_hang(run, answer):
    async def go():
        async def garbage(upstream, reader, writer):
            await upstream.head(reader)
            writer.write(answer)
            await upstream.until_eof(reader)

        async with Upstream(garbage) as up:
            p = pool(up)
            async with asyncio.timeout(2):
                with pytest.raises(UpstreamProtocolError):
                    await p.request("GET", "/", HOST)
                await up.eof_seen.wait()
            return p.count

    assert run(go) == 0


def test_bad_chunk_framing_in_the_body_is_a_protocol_error(run):
    answer = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\nzz\r\n"

    async def go():
        async with Upstream(lambda u, r, w: answer_each(u, r, w, answer)) as up:
            response = await pool(up).request("GET", "/", HOST)
            async with asyncio.timeout(2):
                with pytest.raises(UpstreamProtocolError):
                    await response.read()

    run(go)


def test_a_server_closing_after_the_head_is_a_disconnect_on_read(run):
    async def head_only(upstream, reader, writer):
        await upstream.head(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc")

    async def go():
        async with Upstream(head_only) as up:
            p = pool(up)
            response = await p.request("GET", "/", HOST)
            assert response.status == 200
            async with asyncio.timeout(2):
                with pytest.raises(UpstreamDisconnected):
                    await response.read()
            response.release()
            return p.count

    assert run(go) == 0


def test_a_server_closing_without_answering_a_new_connection_is_a_disconnect(run):
    async def go():
        async def drop(upstream, reader, writer):
            await upstream.head(reader)

        async with Upstream(drop) as up:
            with pytest.raises(UpstreamDisconnected):
                await pool(up).request("GET", "/", HOST)

    run(go)


def test_a_reused_connection_closed_as_the_request_went_out_is_stale(run):
    async def one_then_drop(upstream, reader, writer):
        await upstream.head(reader)
        writer.write(OK)
        await upstream.head(reader)  # the second request arrives; closed without a word

    async def go():
        async with Upstream(one_then_drop) as up:
            p = pool(up)
            first = await p.request("GET", "/", HOST)
            await first.read()
            first.release()
            with pytest.raises(UpstreamStaleConnection):
                await p.request("GET", "/", HOST)
            again = await p.request("GET", "/", HOST, fresh=True)
            return again.status, up.connections, p.count

    assert run(go) == (200, 2, 1)


def test_a_connection_the_server_closed_while_idle_is_never_reused(run):
    async def one_then_close(upstream, reader, writer):
        await upstream.head(reader)
        writer.write(OK)
        await writer.drain()

    async def go():
        async with Upstream(one_then_close) as up:
            p = pool(up)
            await exchange(p)
            async with asyncio.timeout(2):
                while p.idle_count:  # the EOF reaches the idle connection
                    await asyncio.sleep(0.01)
            response = await p.request("GET", "/", HOST)
            return response.status, up.connections

    assert run(go) == (200, 2)


def test_a_byte_sent_to_an_idle_connection_makes_it_unusable(run):
    async def chatty(upstream, reader, writer):
        await upstream.head(reader)
        writer.write(OK)
        await writer.drain()
        await asyncio.sleep(0.05)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nstray")
        await answer_each(upstream, reader, writer)

    async def go():
        async with Upstream(chatty) as up:
            p = pool(up)
            await exchange(p)
            await asyncio.sleep(0.2)
            response = await p.request("GET", "/", HOST)
            return await response.read(), up.connections

    assert run(go) == (b"ok", 2)


def test_a_half_read_answer_released_closes_its_connection(run):
    big = b"HTTP/1.1 200 OK\r\nContent-Length: 1000000\r\n\r\n" + b"x" * 1000000

    async def go():
        async with Upstream(lambda u, r, w: answer_each(u, r, w, big)) as up:
            p = pool(up)
            response = await p.request("GET", "/", HOST)
            await response.read(10)
            response.release()
            response.release()
            return p.count, p.idle_count

    assert run(go) == (0, 0)


# --- cancellation ---------------------------------------------------------------------------


def test_cancelled_while_waiting_for_the_head_closes_and_frees_the_slot(run):
    async def hang(upstream, reader, writer):
        await upstream.head(reader)
        await upstream.until_eof(reader)

    async def go():
        async with Upstream(hang) as up:
            p = pool(up, size=1)
            with pytest.raises(TimeoutError):
                async with asyncio.timeout(0.2):
                    await p.request("GET", "/", HOST)
            async with asyncio.timeout(1):
                await up.eof_seen.wait()
            return p.count

    assert run(go) == 0


def test_cancelled_while_reading_the_body_closes_and_frees_the_slot(run):
    async def trickle(upstream, reader, writer):
        await upstream.head(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nfirst\r\n")
        await upstream.until_eof(reader)

    async def go():
        async with Upstream(trickle) as up:
            p = pool(up, size=1)
            response = await p.request("GET", "/", HOST)
            assert await response.read(100) == b"first"
            with pytest.raises(TimeoutError):
                async with asyncio.timeout(0.2):
                    await response.read(100)
            async with asyncio.timeout(1):
                await up.eof_seen.wait()
            response.release()
            return p.count

    assert run(go) == 0


def test_cancelled_while_writing_a_streamed_body_closes_and_frees_the_slot(run):
    async def go():
        async with Upstream(lambda u, r, w: u.until_eof(r)) as up:
            p = pool(up, size=1)

            async def endless():
                while True:
                    await asyncio.sleep(0.01)
                    yield b"more"

            with pytest.raises(TimeoutError):
                async with asyncio.timeout(0.2):
                    await p.request("PUT", "/", HOST, endless())
            async with asyncio.timeout(1):
                await up.eof_seen.wait()
            return p.count

    assert run(go) == 0


def test_cancelled_while_connecting_frees_the_slot(run, monkeypatch):
    if run.kind == "uvloop":
        pytest.skip("the stdlib loop's create_connection is the one that can be held here")

    async def go():
        async with Upstream(answer_each) as up:
            p = pool(up, size=1)
            real = p.loop.create_connection
            held = asyncio.Event()

            async def slow_connect(*args, **kwargs):
                held.set()
                await asyncio.sleep(10)

            p.loop.create_connection = slow_connect
            task = asyncio.create_task(p.request("GET", "/", HOST))
            await held.wait()
            assert p.count == 1
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            assert p.count == 0
            p.loop.create_connection = real
            response = await p.request("GET", "/", HOST)
            return await response.read()

    assert run(go) == b"ok"


# --- the pool -------------------------------------------------------------------------------


@pytest.mark.parametrize("size", [1, 2])
def test_the_pool_bound_queues_requests_first_come_first_served(run, size):
    gate = None

    async def held(upstream, reader, writer):
        while await upstream.head(reader) is not None:
            await gate.wait()
            writer.write(OK)

    async def go():
        nonlocal gate
        gate = asyncio.Event()
        order = []
        async with Upstream(held) as up:
            p = pool(up, size=size)

            async def one(n):
                response = await p.request("GET", f"/{n}", HOST)
                await response.read()
                order.append(n)
                response.release()

            tasks = []
            for n in range(6):
                tasks.append(asyncio.create_task(one(n)))
                await asyncio.sleep(0.02)
            assert p.count == size and len(p._waiters) == 6 - size
            gate.set()
            await asyncio.gather(*tasks)
            paths = [h.split(b" ")[1] for h in up.heads]
            return up.peak_open, paths, p.count

    peak, paths, count = run(go)
    assert peak == size and count == size
    expected = [b"/0", b"/1", b"/2", b"/3", b"/4", b"/5"]
    if size == 1:
        assert paths == expected
    else:  # two connections: pairs in turn, either order within a pair
        assert [sorted(paths[i : i + 2]) for i in range(0, 6, 2)] == [
            expected[i : i + 2] for i in range(0, 6, 2)
        ]


def test_a_pool_size_of_0_means_unbounded(run):
    gate = None

    async def held(upstream, reader, writer):
        await upstream.head(reader)
        await gate.wait()
        writer.write(OK)
        await upstream.until_eof(reader)

    async def go():
        nonlocal gate
        gate = asyncio.Event()
        async with Upstream(held) as up:
            p = pool(up, size=0)
            tasks = [asyncio.create_task(exchange(p)) for _ in range(20)]
            async with asyncio.timeout(2):
                while up.open < 20:
                    await asyncio.sleep(0.01)
            gate.set()
            return await asyncio.gather(*tasks), p.count

    bodies, count = run(go)
    assert bodies == [b"ok"] * 20 and count == 20


def test_a_cancelled_waiter_leaves_the_queue(run):
    async def hang(upstream, reader, writer):
        await upstream.head(reader)
        await upstream.until_eof(reader)

    async def go():
        async with Upstream(hang) as up:
            p = pool(up, size=1)
            first = asyncio.create_task(p.request("GET", "/", HOST))
            await asyncio.sleep(0.05)
            waiting = asyncio.create_task(p.request("GET", "/", HOST))
            await asyncio.sleep(0.05)
            assert len(p._waiters) == 1
            waiting.cancel()
            with pytest.raises(asyncio.CancelledError):
                await waiting
            assert len(p._waiters) == 0
            first.cancel()
            with pytest.raises(asyncio.CancelledError):
                await first
            return p.count

    assert run(go) == 0


def test_idle_connections_are_closed_after_the_keepalive_time(run):
    async def serve_then_watch(upstream, reader, writer):
        await upstream.head(reader)
        writer.write(OK)
        await upstream.until_eof(reader)

    async def go():
        async with Upstream(serve_then_watch) as up:
            p = pool(up, keepalive=0.2)
            first = await p.request("GET", "/", HOST)
            await first.read()
            first.release()
            assert p.idle_count == 1
            started = asyncio.get_running_loop().time()
            async with asyncio.timeout(2):
                await up.eof_seen.wait()
            return asyncio.get_running_loop().time() - started, p.count, p.idle_count

    waited, count, idle = run(go)
    assert 0.1 < waited < 1.0
    assert (count, idle) == (0, 0)


def test_a_large_answer_is_held_back_while_nobody_reads(run):
    total = 50 * 1024 * 1024
    sent = []

    async def blast(upstream, reader, writer):
        await upstream.head(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % total)
        block = b"x" * (1024 * 1024)
        for _ in range(total // len(block)):
            writer.write(block)
            await writer.drain()
            sent.append(len(block))

    async def go():
        async with Upstream(blast) as up:
            p = pool(up)
            response = await p.request("GET", "/", HOST)
            received = len(await response.read(64 * 1024))
            await asyncio.sleep(0.5)  # a slow client downstream
            sent_while_idle = sum(sent)
            while chunk := await response.read(64 * 1024):
                received += len(chunk)
            response.release()
            return received, sent_while_idle, p.idle_count

    received, sent_while_idle, idle = run(go)
    assert received == total and idle == 1
    assert sent_while_idle < 16 * 1024 * 1024
