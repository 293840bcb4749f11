"""Sync WSGI apps (Django's handler) under the ASGI server, on a bounded thread pool.

Django's own ASGIHandler runs every sync view on one thread per process (`thread_sensitive`), so
the order API would be served one request at a time per process; a2wsgi's WSGIMiddleware runs
the WSGI handler on `WEB_THREADS` threads instead, like gunicorn's gthread workers did
(docs/gateway-proxy.md has the figures). In front of it the body is buffered whole (body.py):
chunked uploads reach Django with a Content-Length, over the limit is 413, a body the client
did not finish never reaches the app. The environ carries the raw request target (`RAW_URI`)
and a `PATH_INFO` decoded byte for byte (PEP 3333), as gunicorn gave them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any
from urllib.parse import unquote_to_bytes

from a2wsgi import WSGIMiddleware

from config.server.body import BodyTooLarge, body_expected, read_body, replay, with_content_length
from config.server.problems import problem_parts

WSGIApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]


def _raw_target(app: WSGIApp) -> WSGIApp:
    def wrapped(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        scope = environ["asgi.scope"]
        raw_path = scope.get("raw_path") or scope["path"].encode()
        query = scope.get("query_string", b"")
        environ["PATH_INFO"] = unquote_to_bytes(raw_path).decode("latin-1")
        environ["RAW_URI"] = (raw_path + (b"?" + query if query else b"")).decode("latin-1")
        environ["QUERY_STRING"] = query.decode("latin-1")
        return app(environ, start_response)

    return wrapped


class ClientGone(Exception):
    """The client went away before its request body was complete."""


def _complete_bodies_only(receive: Any, error: type[Exception]) -> Any:
    """A `receive` for an app reading the body itself: a disconnect raises instead of ending it."""

    async def _receive() -> dict[str, Any]:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise error("The request body was not received completely.")
        return message

    return _receive


class WsgiBridge:
    """`max_body`: buffer the body up to that many bytes first. None: the app reads it as it
    comes, and a body the client does not finish raises `disconnect_error` in the app's read."""

    def __init__(
        self,
        app: WSGIApp,
        *,
        threads: int,
        max_body: int | None,
        disconnect_error: type[Exception] = ClientGone,
    ) -> None:
        self.asgi = WSGIMiddleware(_raw_target(app), workers=threads)
        self.max_body = max_body
        self.disconnect_error = disconnect_error

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if self.max_body is None:
            await self.asgi(scope, _complete_bodies_only(receive, self.disconnect_error), send)
            return
        if body_expected(scope):
            try:
                body = await read_body(scope, receive, limit=self.max_body)
            except BodyTooLarge:
                await _send_problem(send, 413, f"The request body exceeds {self.max_body} bytes.")
                return
            if body is None:  # the client went away before its body was complete
                return
            scope = with_content_length(scope, len(body))
            receive = replay(body, receive)
        await self.asgi(scope, receive, send)

    def close(self) -> None:
        self.asgi.executor.shutdown(wait=True)


async def _send_problem(send: Any, status: int, detail: str) -> None:
    headers, body = problem_parts(status, detail, headers=[(b"connection", b"close")])
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
