"""The database leg of the invalidation bus, for processes that cannot hear Redis pub/sub.

`db_bus_record(...)` inserts one `InvalidationEvent` row in the caller's transaction (it commits
with the change it announces). `db_bus_poll()` — called from cache reads, at most every
`POLL_SECONDS` by one thread of a process, and only while the Redis bus is not live — runs the
handlers of rows other processes wrote in the last `WINDOW_SECONDS`. Rows are read by time window
and remembered by id rather than by "id > last", because PostgreSQL sequence values can commit out
of order. Rows older than `KEEP_SECONDS` are deleted by the writers.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from datetime import timedelta

from django.db import DatabaseError, transaction
from django.utils import timezone

logger = logging.getLogger("gatehouse.invalidation")

POLL_SECONDS = 0.25
WINDOW_SECONDS = 10.0
KEEP_SECONDS = 300.0

_lock = threading.Lock()
_state: dict = {"pid": None, "next_poll": 0.0, "seen": {}}


def db_bus_record(*, kind: str, payload: dict, origin: str) -> None:
    """Insert the message row (savepoint: a failure never breaks the caller's transaction)."""
    from gateway.models import InvalidationEvent

    now = timezone.now()
    try:
        with transaction.atomic():
            InvalidationEvent.objects.create(kind=kind, payload=payload, origin=origin, created_at=now)
            InvalidationEvent.objects.filter(created_at__lt=now - timedelta(seconds=KEEP_SECONDS)).delete()
    except DatabaseError as exc:
        logger.warning("invalidation %s not recorded in the database: %s", kind, exc)


def db_bus_due() -> bool:
    """Whether a poll would query now (async callers then poll in a worker thread)."""
    return _state["pid"] != os.getpid() or time.monotonic() >= _state["next_poll"]


def db_bus_poll(*, origin: str, run: Callable[[str, dict], None], force: bool = False) -> None:
    """Run `run(kind, payload)` for rows of other processes not seen yet (cheap when not due)."""
    now = time.monotonic()
    if not force and now < _state["next_poll"] and _state["pid"] == os.getpid():
        return
    if not _lock.acquire(blocking=False):
        return
    try:
        _state["next_poll"] = now + POLL_SECONDS
        first = _state["pid"] != os.getpid()
        if first:  # a new (or forked) process: nothing cached yet, nothing to replay
            _state["pid"], _state["seen"] = os.getpid(), {}
        rows = _recent_rows()
        if rows is None:
            return
        seen: dict[int, float] = _state["seen"]
        for row_id, kind, payload, row_origin in rows:
            if row_id in seen:
                continue
            seen[row_id] = now
            if not first and row_origin != origin:
                run(kind, payload or {})
        for row_id in [key for key, at in seen.items() if at < now - 2 * WINDOW_SECONDS]:
            del seen[row_id]
    finally:
        _lock.release()


def _recent_rows() -> list[tuple] | None:
    from gateway.models import InvalidationEvent

    since = timezone.now() - timedelta(seconds=WINDOW_SECONDS)
    try:
        return list(
            InvalidationEvent.objects.filter(created_at__gte=since)
            .order_by("id")
            .values_list("id", "kind", "payload", "origin")
        )
    except DatabaseError:
        return None  # the local TTLs still bound staleness


def db_bus_reset() -> None:
    """Forget what this process has seen (tests)."""
    _state.update(pid=None, next_poll=0.0, seen={})
