"""Keep-alive pools of upstream connections: one per target origin and per event loop.

A pool holds at most `size` connections (0: no bound) (idle, busy or being opened). A request beyond that
waits its turn, first come first served; a waiter that is cancelled leaves the queue (and gives
back whatever it was handed meanwhile). Idle connections are reused newest first and closed
after `keepalive` seconds unused; one the server closed, or that received a byte while idle, is
never handed out.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import sys
import weakref
from collections import deque
from collections.abc import AsyncIterator
from functools import lru_cache
from urllib.parse import urlsplit

from gateway.upstream_client.connection import Connection, UpstreamResponse
from gateway.upstream_client.errors import UpstreamConnectError


@lru_cache(maxsize=1)
def _tls_context() -> ssl.SSLContext:
    return ssl.create_default_context()


class Pool:
    """The connections to one origin (scheme://host:port) on one loop."""

    def __init__(self, loop: asyncio.AbstractEventLoop, origin: str, *, size: int, keepalive: float) -> None:
        parts = urlsplit(origin)
        self.loop = loop
        self.origin = origin
        self.host = parts.hostname or ""
        self.tls = parts.scheme == "https"
        self.port = parts.port or (443 if self.tls else 80)
        self.size = size if size > 0 else sys.maxsize  # 0: unbounded, as GATEWAY_UPSTREAM_POOL_SIZE says
        self.keepalive = keepalive
        self.count = 0  # connections open or being opened: never more than `size`
        self.closed = False
        self._idle: deque[Connection] = deque()  # oldest on the left
        self._waiters: deque[asyncio.Future[Connection | None]] = deque()
        self._sweeper: asyncio.TimerHandle | None = None

    async def request(
        self,
        method: str,
        target: str,
        headers: list[tuple[str, str]],
        body: bytes | AsyncIterator[bytes] | None = None,
        *,
        fresh: bool = False,
    ) -> UpstreamResponse:
        """One exchange on a pooled connection (a new one when `fresh`); see `Connection.request`.

        Raises UpstreamConnectError (nothing sent), UpstreamStaleConnection (a reused connection
        failed before any byte of the answer), UpstreamDisconnected, UpstreamProtocolError.
        """
        conn = await self.acquire(fresh=fresh)
        return await conn.request(method, target, headers, body)

    async def acquire(self, *, fresh: bool = False) -> Connection:
        """A connection for one exchange: idle (unless `fresh`), new, or handed over in turn."""
        idle = self._idle
        while True:
            while idle and not fresh:
                conn = idle.pop()
                conn.idle = False
                if conn.usable():
                    return conn
                conn.abort()
            if self.closed:
                raise UpstreamConnectError(f"The pool for {self.origin} is closed.")
            if fresh and idle and self.count >= self.size:
                idle[0].abort()  # the oldest idle connection gives up its slot
            if self.count < self.size:
                self.count += 1  # the slot is ours while connecting
                return await self._connect()
            handed = await self._wait_turn()
            if handed is None:  # a slot was freed and reserved for us
                return await self._connect()
            if handed.usable():
                return handed
            handed.abort()  # closed while handed over: its slot is free again; try once more

    async def _wait_turn(self) -> Connection | None:
        """A connection handed over by `put`, or None: a slot was freed for us to connect with."""
        waiter: asyncio.Future[Connection | None] = self.loop.create_future()
        self._waiters.append(waiter)
        try:
            return await waiter
        except BaseException:
            if waiter.done() and not waiter.cancelled() and waiter.exception() is None:
                # Given something just as we were cancelled: pass it on.
                handed = waiter.result()
                if handed is None:
                    self._free_slot()
                else:
                    self.put(handed)
            else:
                with contextlib.suppress(ValueError):
                    self._waiters.remove(waiter)
            raise

    async def _connect(self) -> Connection:
        try:
            if self.tls:
                _, conn = await self.loop.create_connection(
                    lambda: Connection(self),
                    self.host,
                    self.port,
                    ssl=_tls_context(),
                    server_hostname=self.host,
                )
            else:
                _, conn = await self.loop.create_connection(lambda: Connection(self), self.host, self.port)
        except OSError as exc:
            self._free_slot()
            raise UpstreamConnectError(f"Could not connect to {self.origin}: {exc}") from exc
        except BaseException:
            self._free_slot()
            raise
        if conn.closed:  # lost between connect and here; forget() already gave back the slot
            raise UpstreamConnectError(f"The connection to {self.origin} closed at once.")
        return conn

    def _free_slot(self) -> None:
        self.count -= 1
        self._wake_one()

    def _wake_one(self) -> None:
        """Give a freed slot to the first waiter still waiting."""
        waiters = self._waiters
        while waiters and self.count < self.size:
            waiter = waiters.popleft()
            if not waiter.done():
                self.count += 1
                waiter.set_result(None)
                return

    def put(self, conn: Connection) -> None:
        """A connection free for the next request: to the first waiter, or idle."""
        if self.closed or not conn.usable():
            conn.abort()
            return
        waiters = self._waiters
        while waiters:
            waiter = waiters.popleft()
            if not waiter.done():
                waiter.set_result(conn)
                return
        conn.idle = True
        conn.idle_since = self.loop.time()
        self._idle.append(conn)
        if self._sweeper is None:
            self._sweeper = self.loop.call_at(conn.idle_since + self.keepalive, self._sweep)

    def forget(self, conn: Connection) -> None:
        """`conn` closed (once per connection): its slot is free."""
        if conn.idle:
            conn.idle = False
            with contextlib.suppress(ValueError):
                self._idle.remove(conn)
        self.count -= 1
        self._wake_one()

    def _sweep(self) -> None:
        """Close the connections idle for `keepalive` seconds; come back for the next oldest."""
        self._sweeper = None
        idle = self._idle
        now = self.loop.time()
        while idle and now - idle[0].idle_since >= self.keepalive:
            conn = idle.popleft()
            conn.idle = False
            conn.abort()
        if idle:
            self._sweeper = self.loop.call_at(idle[0].idle_since + self.keepalive, self._sweep)

    def close(self) -> None:
        """Close the idle connections now and the busy ones when they come back."""
        self.closed = True
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None
        while self._idle:
            conn = self._idle.pop()
            conn.idle = False
            conn.abort()
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_exception(UpstreamConnectError(f"The pool for {self.origin} is closed."))

    @property
    def idle_count(self) -> int:
        return len(self._idle)


# --- one pool per (event loop, origin) -----------------------------------------------------------
# A server worker is one process with one loop; tests run several loops one after the other.
# Connections belong to the loop that opened them, so pools are looked up by loop.
_pools: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[str, Pool]] = weakref.WeakKeyDictionary()


def pool_for(origin: str, *, size: int, keepalive: float) -> Pool:
    """The running loop's pool for `origin` (scheme://host:port), created on first use."""
    loop = asyncio.get_running_loop()
    per_loop = _pools.get(loop)
    if per_loop is None:
        per_loop = _pools[loop] = {}
    pool = per_loop.get(origin)
    if pool is None:
        pool = per_loop[origin] = Pool(loop, origin, size=size, keepalive=keepalive)
    return pool


def close_pools() -> None:
    """Close every pool of the running loop (idle connections at once, busy ones on release)."""
    for pool in _pools.pop(asyncio.get_running_loop(), {}).values():
        pool.close()
