"""Cross-instance cache invalidation over Redis pub/sub.

`invalidation_publish(kind=..., payload=...)` runs the handlers of this process at once (after the
current transaction commits) and publishes the message on a Redis channel; a daemon listener thread
in every process runs that process's handlers when a message of another process arrives.

The listener starts lazily (first subscribe or publish), never blocks start-up, stops with
`invalidation_listener_stop()` (the gateway's lifespan shutdown), reconnects with backoff when
Redis goes away, and after every (re)subscription calls each handler with
`{"resync": True, "after_outage": bool}`: messages sent while it was disconnected are lost, so
handlers then drop everything they hold (`after_outage` is true when this process failed to reach
Redis since it last listened: changes may have happened that nobody could announce).
Without REDIS_URL (embedded mode), or while the listener is not connected, other processes hear
messages through the database leg (`gateway.caching.db_bus`): every message except "routes" (which
has its own database version poll) is also written as a row in the publisher's transaction, and
cache reads poll the recent rows every 0.25 s, so every process drops its entries within a second.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import random
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any

# Imported here, never first inside the listener thread: two threads importing redis for the
# first time at once can deadlock (seen in celery beat with a Redis broker).
import redis
from django.conf import settings
from django.db import transaction

from gateway.services.cache_stats import cache_stats_flush
from gateway.services.shared_cache import redis_db_number, shared_cache_is_redis

logger = logging.getLogger("gatehouse.invalidation")

INVALIDATION_KINDS = frozenset({"routes", "rbac", "revoked", "jwks", "responses"})
Handler = Callable[[dict], None]

_handlers: dict[str, list[Handler]] = {}
_lock = threading.Lock()
_listener_pid: int | None = None
# The running listener of this process: (pid, thread, its stop event).
_listener: tuple[int, threading.Thread, threading.Event] | None = None
_listener_connected = threading.Event()
_origin: tuple[int, str] | None = None
_BACKOFF_MAX_SECONDS = 5.0
_POLL_SECONDS = 0.5


def invalidation_channel() -> str:
    return f"gatehouse:invalidation:{redis_db_number()}"


def _origin_id() -> str:
    """Identifies this process (re-minted after fork) so it ignores its own messages."""
    global _origin
    pid = os.getpid()
    if _origin is None or _origin[0] != pid:
        _origin = (pid, f"{pid}-{uuid.uuid4().hex[:12]}")
    return _origin[1]


def invalidation_subscribe(kind: str, handler: Handler, *, start_listener: bool = True) -> None:
    """Run `handler(payload)` whenever `kind` is published, in this process or any other.

    `start_listener=False` (AppConfig.ready) only registers: the listener thread starts on first use.
    """
    if kind not in INVALIDATION_KINDS:
        raise ValueError(f"unknown invalidation kind {kind!r}")
    with _lock:
        handlers = _handlers.setdefault(kind, [])
        if handler not in handlers:
            handlers.append(handler)
    if start_listener:
        invalidation_listener_ensure()


def invalidation_poll_due() -> bool:
    """Whether `invalidation_poll` would query the database now."""
    if invalidation_listener_connected() and shared_cache_is_redis():
        return False
    from gateway.caching.db_bus import db_bus_due

    return db_bus_due()


def invalidation_poll(*, force: bool = False) -> None:
    """Hear other processes' messages from the database while the Redis bus is not live.

    Cheap when not due (one monotonic-clock comparison); at most one query per 0.25 s per process.
    Also starts the Redis listener of this process on first use.
    """
    invalidation_listener_ensure()
    if invalidation_listener_connected() and shared_cache_is_redis():
        return
    from gateway.caching.db_bus import db_bus_poll

    db_bus_poll(origin=_origin_id(), run=_run_handlers, force=force)


def invalidation_publish(*, kind: str, payload: dict | None = None) -> None:
    """Publish after the current transaction commits (at once outside a transaction)."""
    if kind not in INVALIDATION_KINDS:
        raise ValueError(f"unknown invalidation kind {kind!r}")
    message = {"kind": kind, "payload": dict(payload or {}), "origin": _origin_id()}
    if kind != "routes":  # routes have their own database version, polled by routing
        from gateway.caching.db_bus import db_bus_record

        db_bus_record(kind=kind, payload=message["payload"], origin=message["origin"])
    transaction.on_commit(lambda: _deliver(message), robust=True)


def _deliver(message: dict[str, Any]) -> None:
    _run_handlers(message["kind"], message["payload"])
    if not shared_cache_is_redis():
        return
    invalidation_listener_ensure()
    try:
        from django_redis import get_redis_connection

        get_redis_connection("default").publish(invalidation_channel(), json.dumps(message))
    except Exception as exc:
        # Other instances keep their local layers until those expire; say so once per event.
        logger.warning("invalidation %s not published to other instances: %s", message["kind"], exc)


def _run_handlers(kind: str, payload: dict) -> None:
    for handler in list(_handlers.get(kind, ())):
        try:
            handler(payload)
        except Exception:
            logger.exception("invalidation handler %r for %s failed", handler, kind)


def invalidation_listener_connected() -> bool:
    """True while this process hears Redis pub/sub (always True in embedded mode, where the
    database leg carries messages between processes; see `invalidation_poll`)."""
    if not shared_cache_is_redis():
        return True
    return _listener_pid == os.getpid() and _listener_connected.is_set()


def invalidation_listener_ensure() -> None:
    """Start the listener thread of this process if it is not running (cheap when it is)."""
    global _listener_pid, _listener
    if _listener_pid == os.getpid() or not shared_cache_is_redis():
        return
    with _lock:
        if _listener_pid == os.getpid():
            return
        _listener_pid = os.getpid()
        _listener_connected.clear()
        stop = threading.Event()
        thread = threading.Thread(
            target=_listen_forever, args=(stop,), name="gatehouse-invalidation", daemon=True
        )
        _listener = (_listener_pid, thread, stop)
        thread.start()


def invalidation_listener_stop(timeout: float = 5.0) -> bool:
    """Stop this process's listener thread and wait up to `timeout` s for it to end (it wakes at
    least every `_POLL_SECONDS`); True when no listener thread of this process is left running.

    Called by the gateway's lifespan shutdown. A later subscribe, publish or poll starts a new one.
    """
    global _listener_pid, _listener
    with _lock:
        listener, _listener = _listener, None
        if _listener_pid == os.getpid():
            _listener_pid = None
        _listener_connected.clear()
    if listener is None or listener[0] != os.getpid():  # none, or the parent's before a fork
        return True
    _, thread, stop = listener
    stop.set()
    if thread is not threading.current_thread():
        thread.join(timeout)
    return not thread.is_alive()


def _listen_forever(stop: threading.Event) -> None:
    backoff = 0.1
    announced_down = False
    had_failure = False
    channel = invalidation_channel()
    origin = _origin_id()
    while not stop.is_set():
        client = None
        try:
            client = redis.Redis.from_url(
                settings.REDIS_URL,
                socket_connect_timeout=1.0,
                socket_timeout=_POLL_SECONDS + 5,
                socket_keepalive=True,
                health_check_interval=10,
            )
            pubsub = client.pubsub()
            pubsub.subscribe(channel)
            _await_subscription(pubsub)  # so "connected" means messages now reach us
            _listener_connected.set()
            if announced_down:
                logger.warning("invalidation listener reconnected")
                announced_down = False
            backoff = 0.1
            for kind in list(_handlers):  # anything published while we were away is lost
                _run_handlers(kind, {"resync": True, "after_outage": had_failure})
            had_failure = False
            while not stop.is_set():
                message = pubsub.get_message(timeout=_POLL_SECONDS)
                if message and message.get("type") == "message":
                    _dispatch(message["data"], origin)
                cache_stats_flush()
        except Exception as exc:
            _listener_connected.clear()
            had_failure = True
            if not announced_down:
                logger.warning("invalidation listener disconnected: %s: %s", type(exc).__name__, exc)
                announced_down = True
            stop.wait(backoff + random.uniform(0, backoff / 2))
            backoff = min(backoff * 2, _BACKOFF_MAX_SECONDS)
        finally:
            if client is not None:
                with contextlib.suppress(Exception):  # closing a dead connection may fail
                    client.close()


def _await_subscription(pubsub: Any, timeout: float = 2.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        message = pubsub.get_message(timeout=max(0.01, deadline - time.monotonic()))
        if message and message.get("type") == "subscribe":
            return
    raise TimeoutError("no subscribe confirmation from Redis")


def _dispatch(data: bytes | str, origin: str) -> None:
    try:
        message = json.loads(data)
    except (TypeError, ValueError):
        logger.warning("ignoring malformed invalidation message")
        return
    if message.get("origin") == origin or message.get("kind") not in INVALIDATION_KINDS:
        return
    _run_handlers(message["kind"], message.get("payload") or {})
