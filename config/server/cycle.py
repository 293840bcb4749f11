"""uvicorn's request/response cycle with two additions the gateway's hot path needs.

* **One write per buffered answer.** uvicorn writes the status line and headers as soon as the
  app sends `http.response.start`, then the body on `http.response.body`: two `write` calls, two
  `send` syscalls for every small answer. `GatehouseCycle` holds the encoded head and writes it
  together with the first body message (the same bytes, in the same order: uvicorn's own code
  encodes and frames both). A streamed answer's later chunks go out as they come.
* **Disconnect notification.** `scope["extensions"]["gatehouse.disconnect"]` is the cycle: its
  `disconnected` flag and `disconnect_watch(callback)` let the app learn that the client went
  away (connection lost, or the server gave up on its body) without a task of its own blocked in
  `receive()`; the gateway cancels the upstream call from the callback. The callback runs on the
  event loop, from the protocol's `connection_lost`, never while the app's task is running.

protocol.py turns each new cycle into this class before its task first runs.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from uvicorn.protocols.http.httptools_impl import RequestResponseCycle

DISCONNECT_EXTENSION = "gatehouse.disconnect"


class _Capture:
    """A stand-in transport that keeps what is written until `flush`; anything else (close,
    is_closing, get_extra_info…) goes to the real transport, after what was kept."""

    __slots__ = ("real", "chunks")

    def __init__(self, real: Any) -> None:
        self.real = real
        self.chunks: list[bytes] = []

    def write(self, data: bytes) -> None:
        self.chunks.append(data)

    def flush(self) -> None:
        if self.chunks:
            data = b"".join(self.chunks)
            self.chunks.clear()
            if data:
                self.real.write(data)

    def close(self) -> None:
        self.flush()
        self.real.close()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.real, name)


class GatehouseCycle(RequestResponseCycle):
    _held_head: bytes | None = None
    _disconnect_callback: Callable[[], None] | None = None

    # --- disconnect -------------------------------------------------------------------------
    def disconnect_watch(self, callback: Callable[[], None] | None) -> None:
        """Call `callback` once if the client goes away (None: stop watching)."""
        self._disconnect_callback = callback

    def disconnect_fire(self) -> None:
        callback, self._disconnect_callback = self._disconnect_callback, None
        if callback is not None:
            callback()

    # --- one write for head and first body --------------------------------------------------
    async def _send_captured(self, message: Any, head: bytes = b"") -> _Capture:
        real = self.transport
        capture = self.transport = _Capture(real)
        if head:
            capture.chunks.append(head)
        try:
            await super().send(message)
        finally:
            self.transport = real
        return capture

    async def send(self, message: Any) -> None:
        kind = message["type"]
        if kind == "http.response.start" and not self.response_started and not self.disconnected:
            capture = await self._send_captured(message)
            self._held_head = b"".join(capture.chunks)
            return
        head = self._held_head
        if head is None:
            await super().send(message)
            return
        self._held_head = None
        if self.disconnected:
            return
        # The head first, then what uvicorn writes for this message; a close it makes (no
        # keep-alive) flushes both before closing. A message it refuses raises: nothing is
        # written and uvicorn closes the connection, as it would have after a lone head.
        (await self._send_captured(message, head)).flush()
