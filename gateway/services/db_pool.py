"""The bounded thread pool in which the asyncio pipeline does its database work.

The event loop never waits on PostgreSQL: a route-table miss, the idempotency claim / completion
and the other sync services run here, on at most `GATEWAY_DB_THREADS` threads per process (the
connection pool of `DATABASES` bounds the connections they hold). Each call is wrapped like a
Django request (`close_old_connections` before and after), so a broken or expired connection is
never reused and a connection goes back to the pool when the call ends. The caller's context
(correlation id, trace id) travels into the thread, so log lines keep them.
"""

from __future__ import annotations

import asyncio
import contextvars
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from typing import Any, TypeVar

from django.conf import settings
from django.db import close_old_connections

T = TypeVar("T")

_pool: ThreadPoolExecutor | None = None
_lock = threading.Lock()


def db_pool() -> ThreadPoolExecutor:
    """This process's pool (created on first use, or by the gateway's lifespan startup)."""
    global _pool
    if _pool is None:
        with _lock:
            if _pool is None:
                _pool = ThreadPoolExecutor(
                    max_workers=max(1, int(settings.GATEWAY_DB_THREADS)), thread_name_prefix="gateway-db"
                )
    return _pool


def db_pool_shutdown() -> None:
    """Wait for the calls under way, then stop the threads (lifespan shutdown)."""
    global _pool
    with _lock:
        pool, _pool = _pool, None
    if pool is not None:
        pool.shutdown(wait=True)


def _run(function: Callable[..., T], args: tuple, kwargs: dict) -> T:
    close_old_connections()
    try:
        return function(*args, **kwargs)
    finally:
        close_old_connections()


def db_submit(function: Callable[..., T], *args: Any, **kwargs: Any) -> asyncio.Future[T]:
    """Start `function(*args, **kwargs)` in the pool; the future of its result (not cancellable
    once running: a thread cannot be interrupted)."""
    context = contextvars.copy_context()
    loop = asyncio.get_running_loop()
    return loop.run_in_executor(db_pool(), context.run, partial(_run, function, args, kwargs))


async def in_db(function: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """`function(*args, **kwargs)` in the pool, awaited."""
    return await db_submit(function, *args, **kwargs)


async def in_db_shielded(function: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """`in_db` that runs to its end even when the caller is cancelled (releasing a claim must
    happen although the client went away)."""
    return await asyncio.shield(db_submit(function, *args, **kwargs))
