"""Driving an ASGI 3 application in this process the way the server drives it.

For the tests that must observe the serving process itself (its log handler, its threads, a
patched function) rather than only its answers; everything else goes through the real server
(tests/support/gateway_server.py).

    async def main():
        async with Lifespan(gateway.asgi.application):      # startup … shutdown, as uvicorn does
            response = await asgi_request(gateway.asgi.application, "GET", "/gw/x")

    on_a_loop(main())
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, TypeVar

T = TypeVar("T")
ASGI_VERSION = {"version": "3.0", "spec_version": "2.3"}


def on_a_loop(coroutine: Coroutine[Any, Any, T]) -> T:
    """`asyncio.run` on a thread of its own (a browser test earlier in this worker may leave a
    loop set on the main thread); the coroutine starts in that thread's empty context."""
    with ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, coroutine).result()


class Lifespan:
    """`async with Lifespan(app)`: the app's lifespan startup on entry, its shutdown on exit."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self._to_app: asyncio.Queue[dict] = asyncio.Queue()
        self._from_app: asyncio.Queue[dict] = asyncio.Queue()
        self._task: asyncio.Task | None = None

    async def __aenter__(self) -> Lifespan:
        scope = {"type": "lifespan", "asgi": ASGI_VERSION, "state": {}}
        self._task = asyncio.create_task(self.app(scope, self._to_app.get, self._from_app.put))
        await self._to_app.put({"type": "lifespan.startup"})
        message = await self._next()
        if message["type"] != "lifespan.startup.complete":
            raise RuntimeError(f"lifespan startup: {message}")
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self._to_app.put({"type": "lifespan.shutdown"})
        message = await self._next()
        assert self._task is not None
        await self._task
        if message["type"] != "lifespan.shutdown.complete":
            raise RuntimeError(f"lifespan shutdown: {message}")

    async def _next(self) -> dict:
        assert self._task is not None
        getter = asyncio.ensure_future(self._from_app.get())
        await asyncio.wait({getter, self._task}, timeout=30, return_when=asyncio.FIRST_COMPLETED)
        if not getter.done():
            getter.cancel()
            if self._task.done():
                self._task.result()  # the app's own error
            raise TimeoutError("no lifespan answer within 30 s")
        return getter.result()


@dataclass
class AsgiResponse:
    status: int
    headers: list[tuple[str, str]]  # names lower-case, as sent; repeated names kept
    body: bytes

    def header(self, name: str) -> str | None:
        lower = name.lower()
        return next((value for key, value in self.headers if key == lower), None)


async def asgi_request(
    app: Any,
    method: str,
    path: str,
    *,
    query: bytes = b"",
    headers: Iterable[tuple[str, str]] = (),
    body: bytes = b"",
    client: tuple[str, int] = ("127.0.0.1", 50000),
) -> AsgiResponse:
    """One HTTP/1.1 request: the scope the server builds (raw path and query as bytes, a Host),
    the body in one `http.request`, and a client that stays connected until the answer ended."""
    scope = {
        "type": "http",
        "asgi": ASGI_VERSION,
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": query,
        "root_path": "",
        "headers": [(b"host", b"localhost")]
        + [(name.lower().encode("latin-1"), value.encode("latin-1")) for name, value in headers],
        "client": client,
        "server": ("127.0.0.1", 80),
    }
    sent: list[dict] = []
    finished = asyncio.Event()
    body_given = False

    async def receive() -> dict:
        nonlocal body_given
        if not body_given:
            body_given = True
            return {"type": "http.request", "body": body, "more_body": False}
        await finished.wait()  # connected until the answer is complete
        return {"type": "http.disconnect"}

    async def send(message: dict) -> None:
        sent.append(message)
        if message["type"] == "http.response.body" and not message.get("more_body", False):
            finished.set()

    try:
        await app(scope, receive, send)
    finally:
        finished.set()
    start = next(message for message in sent if message["type"] == "http.response.start")
    return AsgiResponse(
        status=start["status"],
        headers=[(name.decode("latin-1"), value.decode("latin-1")) for name, value in start["headers"]],
        body=b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body"),
    )
