"""Sync WSGI apps (Django's handler) under the ASGI server, on a bounded thread pool.

Django's own ASGIHandler runs every sync view on one thread per process (`thread_sensitive`), so
the order API would be served one request at a time per process; this bridge runs the WSGI
handler on `WEB_THREADS` threads instead, like gunicorn's gthread workers did. (a2wsgi does the
same but hops between thread and loop for every message; measured slower, docs/gateway-proxy.md.)
In front of it the body is buffered whole (body.py):
chunked uploads reach Django with a Content-Length, over the limit is 413, a body the client
did not finish never reaches the app. The environ carries the raw request target (`RAW_URI`)
and a `PATH_INFO` decoded byte for byte (PEP 3333), as gunicorn gave them.
"""

from __future__ import annotations

import asyncio
import contextvars
import io
import sys
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from typing import Any
from urllib.parse import unquote_to_bytes

from config.server.body import BodyTooLarge, body_expected, read_body, with_content_length
from config.server.problems import problem_parts

WSGIApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]


class ClientGone(Exception):
    """The client went away before its request body was complete."""


class _StreamedBody:
    """`wsgi.input` for an app that reads the body as it comes (from its worker thread)."""

    def __init__(self, loop: asyncio.AbstractEventLoop, receive: Any, error: type[Exception]) -> None:
        self.loop, self.receive, self.error = loop, receive, error
        self.buffer = bytearray()
        self.more = True

    def _pull(self) -> None:
        message = asyncio.run_coroutine_threadsafe(self.receive(), self.loop).result()
        if message["type"] != "http.request":
            raise self.error("The request body was not received completely.")
        self.buffer += message.get("body", b"")
        self.more = message.get("more_body", False)

    def read(self, size: int = -1) -> bytes:
        while self.more and (size < 0 or len(self.buffer) < size):
            self._pull()
        size = len(self.buffer) if size < 0 else min(size, len(self.buffer))
        data = bytes(self.buffer[:size])
        del self.buffer[:size]
        return data

    def readline(self, size: int = -1) -> bytes:
        while self.more and b"\n" not in self.buffer and (size < 0 or len(self.buffer) < size):
            self._pull()
        end = self.buffer.find(b"\n") + 1 or len(self.buffer)
        return self.read(end if size < 0 else min(size, end))


def _environ(scope: dict[str, Any], body: Any) -> dict[str, Any]:
    raw_path = scope.get("raw_path") or scope["path"].encode()
    query = scope.get("query_string", b"")
    server = scope.get("server") or ("localhost", 80)
    environ: dict[str, Any] = {
        "REQUEST_METHOD": scope["method"],
        "SCRIPT_NAME": "",
        "PATH_INFO": unquote_to_bytes(raw_path).decode("latin-1"),
        "RAW_URI": (raw_path + (b"?" + query if query else b"")).decode("latin-1"),
        "QUERY_STRING": query.decode("latin-1"),
        "SERVER_NAME": server[0],
        "SERVER_PORT": str(server[1] or 0),
        "SERVER_PROTOCOL": f"HTTP/{scope['http_version']}",
        "wsgi.version": (1, 0),
        "wsgi.url_scheme": scope.get("scheme", "http"),
        "wsgi.input": body,
        "wsgi.errors": sys.stderr,
        "wsgi.multithread": True,
        "wsgi.multiprocess": True,
        "wsgi.run_once": False,
    }
    client = scope.get("client")
    if client:
        environ["REMOTE_ADDR"], environ["REMOTE_PORT"] = client[0], str(client[1])
    for name, value in scope["headers"]:
        if name == b"content-length":
            key = "CONTENT_LENGTH"
        elif name == b"content-type":
            key = "CONTENT_TYPE"
        else:
            key = _header_key(name)
        text = value.decode("latin-1")
        environ[key] = environ[key] + "," + text if key in environ else text
    return environ


_KEYS: dict[bytes, str] = {}


def _header_key(name: bytes) -> str:
    key = _KEYS.get(name)
    if key is None:
        key = "HTTP_" + name.decode("latin-1").upper().replace("-", "_")
        if len(_KEYS) < 1000:
            _KEYS[name] = key
    return key


class WsgiBridge:
    """A WSGI app on a pool of `threads` threads.

    `max_body`: buffer the body up to that many bytes first (413 over it, the app not called
    when the client went away). None: the app reads the body as it comes, and a body the client
    does not finish raises `disconnect_error` in the app's read.

    One hop from the event loop to a thread and back per request when the app returns a
    non-streaming response (Django's HttpResponse): the app runs and its body is joined in the
    thread. Streaming responses are iterated in the thread chunk by chunk, each sent (with the
    client's back-pressure) before the next is produced.
    """

    def __init__(
        self,
        app: WSGIApp,
        *,
        threads: int,
        max_body: int | None,
        disconnect_error: type[Exception] = ClientGone,
    ) -> None:
        self.app = app
        self.executor = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="wsgi")
        self.max_body = max_body
        self.disconnect_error = disconnect_error

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            return  # nothing to start; the entrance closes the pool
        loop = asyncio.get_running_loop()
        if self.max_body is None:
            body: Any = _StreamedBody(loop, receive, self.disconnect_error)
        elif body_expected(scope):
            try:
                data = await read_body(scope, receive, limit=self.max_body)
            except BodyTooLarge:
                await _send_problem(send, 413, f"The request body exceeds {self.max_body} bytes.")
                return
            if data is None:  # the client went away before its body was complete
                return
            scope = with_content_length(scope, len(data))
            body = io.BytesIO(data)
        else:
            body = io.BytesIO(b"")
        environ = _environ(scope, body)
        context = contextvars.copy_context()
        status, headers, chunks, iterable = await loop.run_in_executor(
            self.executor, context.run, self._start, environ
        )
        await send({"type": "http.response.start", "status": status, "headers": headers})
        if iterable is None:
            await send({"type": "http.response.body", "body": chunks})
            return
        try:
            iterator = iter(iterable)
            while True:
                chunk = await loop.run_in_executor(self.executor, context.run, next, iterator, None)
                if chunk is None:
                    break
                if chunk:
                    await send({"type": "http.response.body", "body": chunk, "more_body": True})
            await send({"type": "http.response.body", "body": b""})
        finally:
            close = getattr(iterable, "close", None)
            if close is not None:
                await loop.run_in_executor(self.executor, context.run, close)

    def _start(self, environ: dict[str, Any]) -> tuple[int, list[tuple[bytes, bytes]], bytes, Any]:
        started: list[Any] = []

        def start_response(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
            started[:] = [status, headers]
            return _no_write

        iterable = self.app(environ, start_response)
        if getattr(iterable, "streaming", True) is False or isinstance(iterable, list):
            try:
                data = b"".join(iterable)
            finally:
                close = getattr(iterable, "close", None)
                if close is not None:
                    close()
            iterable = None
        else:
            data = b""
            if not started:  # a generator app calls start_response on its first chunk
                first = next(iter(iterable), b"")
                iterable = _prepend(first, iterable)
        status, headers = started
        encoded = [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in headers]
        return int(status.split(" ", 1)[0]), encoded, data, iterable

    def close(self) -> None:
        self.executor.shutdown(wait=True)


def _no_write(data: bytes) -> None:
    raise NotImplementedError("write() is not supported; return an iterable")


class _prepend:
    def __init__(self, first: bytes, rest: Any) -> None:
        self.first, self.rest, self.iterator = first, rest, iter(rest)

    def __iter__(self) -> Any:
        yield self.first
        yield from self.iterator

    def close(self) -> None:
        close = getattr(self.rest, "close", None)
        if close is not None:
            close()


async def _send_problem(send: Any, status: int, detail: str) -> None:
    headers, body = problem_parts(status, detail, headers=[(b"connection", b"close")])
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
