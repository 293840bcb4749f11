"""One HTTP/1.1 connection to an upstream: an asyncio Protocol, httptools' response parser, a response.

A connection carries one exchange at a time (no pipelining). `Connection.request` writes the
request and waits for the response head; the `UpstreamResponse` it returns reads the body (whole
or in bounded chunks) and hands the connection back to its pool (`release`) or closes it
(`close`). Every await that is cancelled or fails closes the connection: a connection is reused
only after a response that was read to its end, on a connection both sides keep alive.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

import httptools

from gateway.upstream_client.errors import (
    UpstreamDisconnected,
    UpstreamProtocolError,
    UpstreamStaleConnection,
)

if TYPE_CHECKING:
    from gateway.upstream_client.pool import Pool

# Methods whose requests carry no body by definition: no `Content-Length: 0` for them (as aiohttp).
_NO_BODY_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "CONNECT", "TRACE"})
_CHUNK_END = b"0\r\n\r\n"

# Read back-pressure: reading the socket pauses while this much body waits for the consumer.
READ_HIGH_WATER = 256 * 1024
READ_LOW_WATER = 64 * 1024


def _close_token(value: bytes | str) -> bool:
    if isinstance(value, bytes):
        value = value.decode("latin-1")
    return any(token.strip().lower() == "close" for token in value.split(","))


def encode_head(
    method: str, target: str, headers: list[tuple[str, str]], framing: str | None
) -> tuple[bytes, bool]:
    """The request head as bytes, and whether it asks the server to close (`Connection: close`).

    The target and headers are written exactly as given, in order; `framing` (a Content-Length or
    Transfer-Encoding line chosen from the body) comes last. A CR or LF inside the target, a
    name or a value would start a line of its own (header injection): ValueError, as aiohttp.
    """
    parts = [method, " ", target, " HTTP/1.1\r\n"]
    close = False
    for name, value in headers:
        parts += (name, ": ", value, "\r\n")
        if len(name) == 10 and name.lower() == "connection" and _close_token(value):
            close = True
    lines = len(headers) + 2
    if framing is not None:
        parts += (framing, "\r\n")
        lines += 1
    parts.append("\r\n")
    text = "".join(parts)
    if text.count("\n") != lines or text.count("\r") != lines or " " in target:
        raise ValueError("A CR, LF or space in the request target or a header would split the request head.")
    try:
        return text.encode("latin-1"), close
    except UnicodeEncodeError:
        return text.encode("utf-8"), close


class UpstreamResponse:
    """Status, reason, raw headers in upstream order; the body through `read`."""

    __slots__ = ("status", "reason", "headers", "version", "_conn")

    def __init__(
        self, conn: Connection, status: int, reason: str, headers: list[tuple[bytes, bytes]], version: str
    ) -> None:
        self.status = status
        self.reason = reason
        self.headers = headers
        self.version = version
        self._conn: Connection | None = conn

    def header(self, name: bytes) -> bytes | None:
        """The first value of header `name` (lower-case bytes), or None."""
        for key, value in self.headers:
            if len(key) == len(name) and key.lower() == name:
                return value
        return None

    @property
    def complete(self) -> bool:
        """The body was read to its end (or there was none)."""
        conn = self._conn
        return conn is None or (conn.complete and not conn.chunks)

    async def read(self, n: int = -1) -> bytes:
        """The whole body (n < 0), or up to `n` bytes of it as they arrive; b"" at its end."""
        conn = self._conn
        if conn is None:
            return b""
        try:
            if n < 0:
                return await conn.read_all()
            return await conn.read_some(n)
        except BaseException:
            self.close()
            raise

    def release(self) -> None:
        """Give the connection back to the pool if the body was read to its end and both sides
        keep it alive; close it otherwise. Safe to call any number of times."""
        conn = self._conn
        if conn is not None:
            self._conn = None
            conn.finish()

    def close(self) -> None:
        """Close the connection (a half-read response cannot be reused). Safe to call again."""
        conn = self._conn
        if conn is not None:
            self._conn = None
            conn.abort()


class Connection(asyncio.Protocol):
    """The protocol of one upstream connection; also the parser's callback target."""

    def __init__(self, pool: Pool) -> None:
        self.pool = pool
        self.loop = pool.loop
        self.transport: asyncio.Transport | None = None
        self.reused = False  # it carried a complete exchange before this one
        self.idle = False  # in the pool's idle list
        self.idle_since = 0.0
        self.closed = False
        self._eof = False
        self._busy = False
        self._write_paused = False
        self._drain_waiter: asyncio.Future[None] | None = None
        self._reset()

    def _reset(self) -> None:
        self._parser: httptools.HttpResponseParser | None = None
        self._method = ""
        self._close_requested = False
        self._got_bytes = False
        self._head_done = False
        self._interim = False
        self._status = 0
        self._reason = b""
        self._headers: list[tuple[bytes, bytes]] = []
        self._waiter: asyncio.Future[None] | None = None
        self._error: BaseException | None = None
        self._reading_all = False
        self._paused_reading = False
        self.chunks: deque[bytes] = deque()
        self._offset = 0  # bytes of chunks[0] already read
        self.buffered = 0  # bytes in chunks not yet read
        self.complete = False
        self.keep_alive = False

    # --- the pool's view ------------------------------------------------------------------

    def usable(self) -> bool:
        """Still fit for a new request: open, no EOF or stray byte seen from the server."""
        transport = self.transport
        return not (self.closed or self._eof or transport is None or transport.is_closing())

    def finish(self) -> None:
        """The exchange is over: back to the pool when reusable, closed otherwise."""
        reusable = self.complete and self.keep_alive and not self.chunks and self._error is None
        self._busy = False
        if self._paused_reading:
            self._paused_reading = False
            if self.transport is not None and not self.transport.is_closing():
                self.transport.resume_reading()
        if reusable and self.usable():
            self.reused = True
            self._reset()
            self.pool.put(self)
        else:
            self.abort()

    def abort(self) -> None:
        """Close now; the pool forgets the connection (once) and a waiter may take the slot."""
        self._busy = False
        if self.transport is not None:
            self.transport.abort()
        self._lost()

    # --- the exchange -----------------------------------------------------------------------

    async def request(
        self,
        method: str,
        target: str,
        headers: list[tuple[str, str]],
        body: bytes | AsyncIterator[bytes] | None,
    ) -> UpstreamResponse:
        """Send one request and wait for its final response head (1xx interim answers skipped)."""
        transport = self.transport
        assert transport is not None and not self._busy
        self._busy = True
        self._method = method
        self._parser = httptools.HttpResponseParser(self)
        try:
            if body is None or isinstance(body, bytes | bytearray | memoryview):
                if body:
                    framing: str | None = f"Content-Length: {len(body)}"
                else:
                    framing = None if method in _NO_BODY_METHODS else "Content-Length: 0"
                head, self._close_requested = encode_head(method, target, headers, framing)
                transport.write(head + body if body else head)
            else:
                await self._send_streamed(method, target, headers, body)
            if not self._head_done:
                if self._error is not None:
                    raise self._error
                self._waiter = self.loop.create_future()
                try:
                    await self._waiter
                finally:
                    self._waiter = None
            if self._error is not None and not self._head_done:
                raise self._error
        except BaseException:
            self.abort()
            raise
        return UpstreamResponse(
            self,
            self._status,
            self._reason.decode("latin-1"),
            self._headers,
            self._parser.get_http_version(),
        )

    async def _send_streamed(
        self, method: str, target: str, headers: list[tuple[str, str]], body: AsyncIterator[bytes]
    ) -> None:
        declared = None
        for name, value in headers:
            if len(name) == 14 and name.lower() == "content-length":
                declared = int(value)
        chunked = declared is None
        head, self._close_requested = encode_head(
            method, target, headers, "Transfer-Encoding: chunked" if chunked else None
        )
        transport = self.transport
        assert transport is not None
        transport.write(head)
        sent = 0
        async for chunk in body:
            if not chunk:
                continue
            if self._error is not None or self.closed:
                raise self._error or UpstreamDisconnected("The connection closed while sending.")
            sent += len(chunk)
            if chunked:
                transport.writelines((b"%x\r\n" % len(chunk), chunk, b"\r\n"))
            else:
                if sent > declared:  # type: ignore[operator]
                    raise UpstreamProtocolError("The request body is longer than its Content-Length.")
                transport.write(chunk)
            if self._write_paused:
                await self._drain()
        if chunked:
            transport.write(_CHUNK_END)
        elif sent != declared:
            raise UpstreamProtocolError("The request body is shorter than its Content-Length.")

    async def _drain(self) -> None:
        if self.closed:
            raise self._error or UpstreamDisconnected("The connection closed while sending.")
        waiter = self._drain_waiter = self.loop.create_future()
        try:
            await waiter
        finally:
            self._drain_waiter = None

    async def read_all(self) -> bytes:
        self._reading_all = True
        if self._paused_reading and self.transport is not None:
            self._paused_reading = False
            self.transport.resume_reading()
        while not self.complete:
            await self._wait_body()
        chunks = self.chunks
        if not chunks:
            return b""
        if self._offset:
            chunks[0] = chunks[0][self._offset :]
            self._offset = 0
        data = chunks[0] if len(chunks) == 1 else b"".join(chunks)
        chunks.clear()
        self.buffered = 0
        return data

    async def read_some(self, n: int) -> bytes:
        chunks = self.chunks
        while not chunks:
            if self.complete:
                return b""
            await self._wait_body()
        first = chunks[0]
        offset = self._offset
        if len(first) - offset > n:
            data = first[offset : offset + n]
            self._offset = offset + n
        else:
            if offset:
                first = first[offset:]
                self._offset = 0
            chunks.popleft()
            parts = [first]
            size = len(first)
            while chunks and size + len(chunks[0]) <= n:
                part = chunks.popleft()
                parts.append(part)
                size += len(part)
            data = first if len(parts) == 1 else b"".join(parts)
        self.buffered -= len(data)
        if self._paused_reading and self.buffered <= READ_LOW_WATER and self.transport is not None:
            self._paused_reading = False
            self.transport.resume_reading()
        return data

    async def _wait_body(self) -> None:
        if self._error is not None:
            raise self._error
        self._waiter = self.loop.create_future()
        try:
            await self._waiter
        finally:
            self._waiter = None
        if self._error is not None:
            raise self._error

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _fail(self, error: BaseException) -> None:
        if self._error is None and not self.complete:
            self._error = error
        self._wake()

    # --- asyncio.Protocol -------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        if not self._busy or self.complete:
            # A byte nobody asked for (idle, or past the end of the response): out of sync.
            self._error = self._error or UpstreamProtocolError("The service sent data after its response.")
            self.abort()
            return
        self._got_bytes = True
        try:
            self._parser.feed_data(data)  # type: ignore[union-attr]
        except httptools.HttpParserUpgrade:
            self._fail(UpstreamProtocolError("The service switched protocols."))
            self.abort()
        except httptools.HttpParserError as exc:
            self._fail(UpstreamProtocolError(f"The service sent an invalid response: {exc}"))
            self.abort()

    def eof_received(self) -> bool:
        self._eof = True
        self._end_of_input()
        return False  # the transport closes itself

    def connection_lost(self, exc: Exception | None) -> None:
        self._end_of_input()
        self._lost()
        waiter = self._drain_waiter
        if waiter is not None and not waiter.done():
            waiter.set_exception(self._error or UpstreamDisconnected("The connection closed while sending."))

    def pause_writing(self) -> None:
        self._write_paused = True

    def resume_writing(self) -> None:
        self._write_paused = False
        waiter = self._drain_waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _end_of_input(self) -> None:
        """The server sent its last byte: the end of a read-until-close body, or a failure."""
        if not self._busy or self.complete:
            return
        if self._head_done and not self._framed():
            self.complete = True  # a body without Content-Length or chunking ends with the connection
            self.keep_alive = False
            self._wake()
        elif self._got_bytes:
            self._fail(UpstreamDisconnected("The service closed the connection mid-response."))
        elif self.reused:
            self._fail(UpstreamStaleConnection("The kept-alive connection was closed by the service."))
        else:
            self._fail(UpstreamDisconnected("The service closed the connection without answering."))

    def _framed(self) -> bool:
        """The body has a Content-Length or ends with a last chunk (else: it ends with the connection)."""
        for name, value in self._headers:
            lower = name.lower()
            if lower == b"content-length":
                return True
            if lower == b"transfer-encoding" and value.rsplit(b",", 1)[-1].strip().lower() == b"chunked":
                return True
        return False

    def _lost(self) -> None:
        if not self.closed:
            self.closed = True
            self.pool.forget(self)

    # --- httptools callbacks ------------------------------------------------------------------

    def on_message_begin(self) -> None:
        self._headers = []
        self._reason = b""

    def on_status(self, reason: bytes) -> None:
        self._reason += reason

    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers.append((name, value))

    def on_headers_complete(self) -> None:
        parser = self._parser
        status = parser.get_status_code()  # type: ignore[union-attr]
        if 100 <= status < 200:
            if status == 101:
                raise UpstreamProtocolError("The service switched protocols.")
            self._interim = True  # 100 Continue, 103 Early Hints: the final answer follows
            return
        self._status = status
        self._head_done = True
        if self._method == "HEAD":
            # No body follows whatever the headers say; the parser is not used again.
            self.complete = True
            self.keep_alive = not self._close_requested and self._head_keep_alive()
        self._wake()

    def _head_keep_alive(self) -> bool:
        version = self._parser.get_http_version()  # type: ignore[union-attr]
        tokens = [v for n, v in self._headers if n.lower() == b"connection"]
        if version == "1.1":
            return not any(_close_token(value) for value in tokens)
        return any(b"keep-alive" in value.lower() for value in tokens)

    def on_body(self, body: bytes) -> None:
        if self.complete:
            raise UpstreamProtocolError("The service sent a body where none may be.")
        self.chunks.append(body)
        self.buffered += len(body)
        if self.buffered > READ_HIGH_WATER and not self._reading_all and not self._paused_reading:
            self._paused_reading = True
            self.transport.pause_reading()  # type: ignore[union-attr]
        self._wake()

    def on_message_complete(self) -> None:
        if self._interim:
            self._interim = False
            return
        if self.complete:  # HEAD: already complete at its head
            return
        self.complete = True
        self.keep_alive = not self._close_requested and self._parser.should_keep_alive()  # type: ignore[union-attr]
        self._wake()
