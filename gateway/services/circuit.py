"""Circuit breaker per upstream target, kept in process memory.

A target opens after GATEWAY_CIRCUIT_FAILURES consecutive failures (connection errors, timeouts,
502/503/504) and refuses traffic for GATEWAY_CIRCUIT_RESET_SECONDS; then it is half-open: one
probe request is let through, success closes it, failure opens it again. State is per worker
process on purpose: a shared store would put Redis on the hot path for every request.
"""

from __future__ import annotations

import math
import threading
import time
from dataclasses import dataclass

from django.conf import settings

from adminsite.recording import dashboard_circuit_changed
from common import local_cache


@dataclass
class _TargetState:
    failures: int = 0
    open_until: float = 0.0  # monotonic time; 0 = closed
    probing: bool = False  # a half-open probe is in flight


class _Circuits:
    """All targets' states; registered with the local-cache reset so tests start closed."""

    def __init__(self) -> None:
        self.states: dict[str, _TargetState] = {}
        self.lock = threading.Lock()

    def clear(self) -> None:
        with self.lock:
            self.states.clear()


_circuits = _Circuits()
local_cache._registry.append(_circuits)  # type: ignore[arg-type]  # reset with the other per-process layers


def circuit_allow(*, target: str) -> bool:
    """May a request go to `target` now? A half-open target admits a single probe."""
    state = _circuits.states.get(target)
    if state is None or not state.open_until:
        return True  # closed: the hot path takes no lock
    with _circuits.lock:
        if time.monotonic() < state.open_until or state.probing:
            return False
        state.probing = True
    dashboard_circuit_changed(target=target, state="half_open", failures=state.failures, open_until=0.0)
    return True


def circuit_retry_after(*, target: str) -> int:
    """Whole seconds until `target` half-opens (at least 1)."""
    state = _circuits.states.get(target)
    if state is None:
        return 1
    return max(1, math.ceil(state.open_until - time.monotonic()))


def circuit_record_success(*, target: str) -> None:
    state = _circuits.states.get(target)
    if state is not None and (state.failures or state.open_until):
        with _circuits.lock:
            _circuits.states.pop(target, None)
        dashboard_circuit_changed(target=target, state="closed", failures=0, open_until=0.0)


def circuit_record_failure(*, target: str) -> bool:
    """Count a failure; returns True when this failure opened the circuit."""
    with _circuits.lock:
        state = _circuits.states.setdefault(target, _TargetState())
        opened = False
        if state.probing:  # the half-open probe failed: open again for a full period
            state.probing = False
            state.open_until = time.monotonic() + settings.GATEWAY_CIRCUIT_RESET_SECONDS
            opened = True
        else:
            state.failures += 1
            if state.failures >= settings.GATEWAY_CIRCUIT_FAILURES and not state.open_until:
                state.open_until = time.monotonic() + settings.GATEWAY_CIRCUIT_RESET_SECONDS
                opened = True
    if opened:  # the staff dashboard shows open circuits (adminsite.recording)
        dashboard_circuit_changed(
            target=target, state="open", failures=state.failures, open_until=state.open_until
        )
    return opened


def circuit_release_probe(*, target: str) -> None:
    """A probe that ended with neither success nor failure (e.g. client went away) frees the slot."""
    state = _circuits.states.get(target)
    if state is not None and state.probing:
        with _circuits.lock:
            state.probing = False
