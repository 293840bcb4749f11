"""What the gateway tells the staff dashboard, at almost no cost on the request path.

`dashboard_record` adds one request to in-process counters (a lock and three dict updates, no
I/O); `dashboard_circuit_changed` notes a circuit's new state. A daemon thread per process
writes both to the shared store (adminsite.store) every DASHBOARD_FLUSH_SECONDS, only when
something changed, so Redis sees one pipeline per process per interval, never one per request.
A flush that fails (Redis down) drops those counts: the dashboard is a view, not a ledger.
"""

from __future__ import annotations

import atexit
import logging
import os
import threading
import time
from typing import Any

from django.conf import settings

from adminsite import store

logger = logging.getLogger(__name__)


class _Recorder:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.increments: store.Traffic = {}
        self.history: store.Traffic = {}  # this process's last hour (embedded mode's files)
        self.circuits: dict[str, dict[str, Any]] = {}
        self.circuits_dirty = False
        self.wake = threading.Event()
        self.thread: threading.Thread | None = None
        self.process = store.process_name()

    def after_fork(self) -> None:
        """A forked worker starts empty, with its own name and (lazily) its own flusher."""
        self.lock = threading.Lock()
        self.increments, self.history, self.circuits = {}, {}, {}
        self.circuits_dirty = False
        self.wake = threading.Event()
        self.thread = None
        self.process = store.process_name()

    def ensure_flusher(self) -> None:
        if self.thread is None:
            with self.lock:
                if self.thread is None:
                    self.thread = threading.Thread(target=self._run, name="dashboard-flush", daemon=True)
                    self.thread.start()

    def _run(self) -> None:
        while True:
            self.wake.wait(settings.DASHBOARD_FLUSH_SECONDS)
            self.wake.clear()
            self.flush()

    def flush(self) -> None:
        with self.lock:
            increments, self.increments = self.increments, {}
            circuits = dict(self.circuits) if self.circuits_dirty else None
            self.circuits_dirty = False
            if increments and not settings.REDIS_URL:
                for key, cell in increments.items():
                    self.history.setdefault(key, store.MinuteCell()).add(cell)
                oldest = int(time.time() // 60) - store.WINDOW_MINUTES
                self.history = {key: cell for key, cell in self.history.items() if key[0] >= oldest}
            history = dict(self.history)
        try:
            if increments:
                store.traffic_add(increments=increments, history=history, process=self.process)
            if circuits is not None:
                store.circuits_put(process=self.process, states=circuits)
        except Exception as exc:  # the dashboard must never hurt the gateway
            logger.debug("dashboard flush failed: %s", exc)


_recorder = _Recorder()
os.register_at_fork(after_in_child=_recorder.after_fork)
atexit.register(_recorder.flush)  # a worker stopping (SIGTERM, max-requests) writes its last counts


def dashboard_record(*, route: str, status: int, duration: float) -> None:
    """Count one gateway request: `route` is the matched pattern (or "unmatched"), `duration` in s."""
    key = (int(time.time() // 60), route)
    bucket = store.latency_bucket(duration)
    recorder = _recorder
    with recorder.lock:
        cell = recorder.increments.get(key)
        if cell is None:
            cell = recorder.increments[key] = store.MinuteCell()
        cell.requests += 1
        if status >= 500:
            cell.errors_5xx += 1
        elif status >= 400:
            cell.errors_4xx += 1
        cell.buckets[bucket] = cell.buckets.get(bucket, 0) + 1
    if recorder.thread is None:
        recorder.ensure_flusher()


def dashboard_circuit_changed(*, target: str, state: str, failures: int, open_until: float) -> None:
    """A circuit changed: `state` closed | open | half_open, `open_until` a time.monotonic() value."""
    recorder = _recorder
    with recorder.lock:
        if state == "closed":
            recorder.circuits.pop(target, None)
        else:
            recorder.circuits[target] = {
                "state": state,
                "failures": failures,
                "open_until": time.time() + (open_until - time.monotonic()) if open_until else None,
            }
        recorder.circuits_dirty = True
    recorder.ensure_flusher()
    recorder.wake.set()  # state changes are rare: publish now rather than at the next interval


def dashboard_flush() -> None:
    """Write what this process counted so far (tests, shutdown hooks)."""
    _recorder.flush()
