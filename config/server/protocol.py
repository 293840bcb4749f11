"""uvicorn's httptools protocol with the protections the gateway needs in front of the app.

uvicorn (0.54) itself bounds neither the time to send a request head nor the pause between body
reads, has no size limits for the request line and headers (httptools buffers a header until its
line ends), answers parser errors as text/plain and would dispatch a request whose
`Transfer-Encoding` it then fails to parse. This subclass adds, per connection:

* **header timeout** (`WEB_HEADER_TIMEOUT`): armed when the connection opens and, on a kept-alive
  connection, at the first byte of the next request; a head not complete by then → 408 and close
  (nothing received at all → just close). Trickling bytes does not extend it.
* **body timeout** (`WEB_BODY_TIMEOUT`): idle time between two pieces of a request body, counted
  only while the server is reading (when the app stops reading, back-pressure pauses the socket
  and the clock). Expired → 408 (if no answer started) and close; the app's `receive()` returns
  `http.disconnect`, so it never takes a cut body for a whole one.
* **limits**: request target > `WEB_MAX_REQUEST_LINE` → 414; header bytes > `WEB_MAX_HEADER_BYTES`
  or more than `WEB_MAX_HEADERS` fields → 431 (raw head bytes are counted as they arrive, so a
  header without end cannot grow the buffer); `Transfer-Encoding` other than `chunked` → 501
  before anything is dispatched; an unknown method → 501; any other framing error → 400.
* **connection cap** (`WEB_MAX_CONNECTIONS` per process): a request on a connection above it is
  answered 503 with `Retry-After` at once and the connection closed.
* an absolute-form request target (`GET http://host/x`) replaces `Host` by its authority
  (RFC 9112 §3.2.2), so the Host check in config/asgi.py sees what the target says.

Every such answer is problem+json (problems.py). Keep-alive timeout, back-pressure and the
SIGTERM drain are uvicorn's own (see docs/gateway-proxy.md, "Server").

Each request's cycle is a `GatehouseCycle` (cycle.py): the response head goes out in the same
write as the first body chunk (one syscall for a buffered answer, not two), and the app can ask
to be told when the client goes away without a task of its own waiting on `receive()`
(`scope["extensions"]["gatehouse.disconnect"]`).
"""

from __future__ import annotations

import asyncio
import re
from dataclasses import dataclass
from functools import cache
from typing import Any

import httptools
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from config.server.cycle import DISCONNECT_EXTENSION, GatehouseCycle
from config.server.problems import problem_bytes, problem_parts

_REQUEST_LINE = re.compile(rb"[!#$%&'*+.^_`|~0-9A-Za-z-]+ [^ \r\n]+ HTTP/\d\.\d\r?\n")


@dataclass(frozen=True)
class Limits:
    header_timeout: float
    body_timeout: float
    max_request_line: int
    max_header_bytes: int
    max_headers: int
    max_connections: int


@cache
def limits() -> Limits:
    from django.conf import settings

    return Limits(
        header_timeout=settings.WEB_HEADER_TIMEOUT,
        body_timeout=settings.WEB_BODY_TIMEOUT,
        max_request_line=settings.WEB_MAX_REQUEST_LINE,
        max_header_bytes=settings.WEB_MAX_HEADER_BYTES,
        max_headers=settings.WEB_MAX_HEADERS,
        max_connections=settings.WEB_MAX_CONNECTIONS,
    )


class _Reject(Exception):
    def __init__(self, status: int, detail: str) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail


async def _over_capacity(scope: Any, receive: Any, send: Any) -> None:
    headers, body = problem_parts(
        503,
        "The server has too many open connections; retry shortly.",
        headers=[(b"retry-after", b"1"), (b"connection", b"close")],
    )
    await send({"type": "http.response.start", "status": 503, "headers": headers})
    await send({"type": "http.response.body", "body": body})


class GatehouseHttpProtocol(HttpToolsProtocol):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.limits = limits()
        self._raw_head_limit = self.limits.max_request_line + self.limits.max_header_bytes + 1024
        self._timer: asyncio.TimerHandle | None = None
        self._in_head = True  # between the end of a request (or the connection start) and a head
        self._began = False  # the first byte of the current head arrived
        self._raw_head = 0
        self._url_bytes = 0
        self._header_bytes = 0
        self._header_count = 0
        self._reject: _Reject | None = None

    # --- timers ---------------------------------------------------------------------------

    def _arm(self, seconds: float, callback: Any) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer = self.loop.call_later(seconds, callback)

    def _disarm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _head_timed_out(self) -> None:
        self._timer = None
        if self.cycle is not None and not self.cycle.response_complete:
            # A pipelined head behind a request still being answered: wait for that one.
            self._arm(self.limits.header_timeout, self._head_timed_out)
            return
        if self._began:
            self._fail(408, "The request head was not received in time.")
        elif not self.transport.is_closing():
            self.transport.close()

    def _body_timed_out(self) -> None:
        self._timer = None
        if self.flow.read_paused:  # the app is not reading: not the client's fault
            self._arm(self.limits.body_timeout, self._body_timed_out)
            return
        self._fail(408, "The request body was not received in time.")

    # --- answering errors -----------------------------------------------------------------

    def _fail(self, status: int, detail: str) -> None:
        """Answer a server-level error (unless an answer already started) and close."""
        cycle = self.cycle
        if self._in_head:  # `cycle` is the previous request's: answer unless it is still going
            answer = cycle is None or cycle.response_complete
        else:  # `cycle` is this request's
            answer = cycle is not None and not cycle.response_started
        if cycle is not None and not cycle.response_complete:
            cycle.disconnected = True  # the app's receive() gets http.disconnect, send() is a no-op
            cycle.message_event.set()
            if isinstance(cycle, GatehouseCycle):
                cycle.disconnect_fire()
        if self.transport.is_closing():
            return
        if answer:
            self.transport.write(
                problem_bytes(status, detail, default_headers=self.server_state.default_headers)
            )
        self.transport.close()

    def send_400_response(self, msg: str) -> None:
        self._fail(400, msg)

    # --- protocol ---------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm(self.limits.header_timeout, self._head_timed_out)

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        cycle = self.cycle
        super().connection_lost(exc)
        if isinstance(cycle, GatehouseCycle) and cycle.disconnected:
            cycle.disconnect_fire()

    def data_received(self, data: bytes) -> None:
        self._unset_keepalive_if_required()
        if self._in_head:
            self._raw_head += len(data)
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserCallbackError:
            reject = self._reject or _Reject(400, "Invalid HTTP request.")
            self._fail(reject.status, reject.detail)
            return
        except httptools.HttpParserInvalidMethodError:
            if _REQUEST_LINE.match(data):  # a well-formed line with a method nobody knows
                self._fail(501, "Unknown request method.")
            else:
                self._fail(400, "Malformed request line.")
            return
        except httptools.HttpParserUpgrade:
            self._unsupported_upgrade_warning()  # no WebSocket: served as a plain request
        except httptools.HttpParserError as exc:
            self._fail(400, f"Malformed HTTP request: {exc}.")
            return
        if self._in_head and self._raw_head > self._raw_head_limit:
            self._fail(431, "The request head is too large.")

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._began = True
        self._url_bytes = self._header_bytes = self._header_count = 0
        if self._timer is None:  # kept-alive connection: the clock starts at the first byte
            self._arm(self.limits.header_timeout, self._head_timed_out)

    def on_url(self, url: bytes) -> None:
        self._url_bytes += len(url)
        if self._url_bytes > self.limits.max_request_line:
            self._reject = _Reject(414, "The request target is too long.")
            raise self._reject
        super().on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._header_count += 1
        self._header_bytes += len(name) + len(value) + 4
        if self._header_count > self.limits.max_headers or self._header_bytes > self.limits.max_header_bytes:
            self._reject = _Reject(431, "The request header fields are too large.")
            raise self._reject
        if name.lower() == b"transfer-encoding":
            codings = [c.strip().lower() for c in value.split(b",") if c.strip()]
            if codings != [b"chunked"]:
                self._reject = _Reject(501, "Only Transfer-Encoding: chunked is supported for requests.")
                raise self._reject
        super().on_header(name, value)

    def on_headers_complete(self) -> None:
        self._disarm()
        if self.url[:1] not in (b"/", b"*"):  # absolute form: the target's authority is the host
            try:
                parsed = httptools.parse_url(self.url)
            except httptools.HttpParserInvalidURLError:
                self._reject = _Reject(400, "Invalid request target.")
                raise self._reject from None
            authority = parsed.host or b""
            if parsed.port is not None:
                authority += b":%d" % parsed.port
            self.headers[:] = [(n, v) for n, v in self.headers if n != b"host"]
            self.headers.append((b"host", authority))
        self._in_head = False
        self._began = False
        self._raw_head = 0
        scope = self.scope
        if len(self.connections) > self.limits.max_connections:
            app, self.app = self.app, _over_capacity
            try:
                super().on_headers_complete()
            finally:
                self.app = app
        else:
            super().on_headers_complete()
        cycle = self.cycle
        if cycle is not None and cycle.scope is scope and type(cycle) is not GatehouseCycle:
            # The cycle was made just now and its task has not run yet (it starts on the next
            # loop step), so it can still become the subclass; the scope names it for the app.
            cycle.__class__ = GatehouseCycle
            scope["extensions"] = {**scope.get("extensions", {}), DISCONNECT_EXTENSION: cycle}
        self._arm(self.limits.body_timeout, self._body_timed_out)

    def on_body(self, body: bytes) -> None:
        super().on_body(body)
        self._arm(self.limits.body_timeout, self._body_timed_out)

    def on_message_complete(self) -> None:
        super().on_message_complete()
        self._disarm()
        self._in_head = True
