"""What the sync (proxy.py) and async (upstream.py) upstream clients share: errors and retry rules.

Both clients raise these problem+json errors and retry by the same rules (SPEC section 3, "Time
and retries"), so the gateway answers alike whichever client forwarded the request.
"""

from __future__ import annotations

import itertools
import random
import threading
from collections.abc import Iterator

from common.errors import ApplicationError
from gateway.services.circuit import circuit_allow

# Methods whose repetition is harmless (RFC 9110 §9.2.2), retried on any upstream failure.
RETRYABLE_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "PUT", "DELETE"})
RETRYABLE_STATUSES = frozenset({502, 503, 504})
BACKOFF_BASE_SECONDS = 0.05
BACKOFF_CAP_SECONDS = 1.0
# Bodies up to this size (with a Content-Length) are read whole: cacheable, replayable, and
# one write to the client; anything larger or of unknown length streams in chunks.
BUFFER_LIMIT_BYTES = 256 * 1024
STREAM_CHUNK_BYTES = 64 * 1024
MIN_ATTEMPT_SECONDS = 0.01


class BadGateway(ApplicationError):
    status, slug, title = 502, "bad-gateway", "Bad gateway"


class GatewayTimeout(ApplicationError):
    status, slug, title = 504, "gateway-timeout", "Gateway timeout"


class CircuitOpen(ApplicationError):
    status, slug, title = 503, "upstream-unavailable", "Upstream unavailable"


_round_robin: dict[tuple[str, ...], Iterator[int]] = {}
_round_robin_lock = threading.Lock()


def next_start(targets: tuple[str, ...]) -> int:
    """Where the next request to `targets` starts its rotation (round robin, random first)."""
    counter = _round_robin.get(targets)
    if counter is None:
        with _round_robin_lock:
            counter = _round_robin.setdefault(targets, itertools.count(random.randrange(len(targets))))
    return next(counter)  # itertools.count is atomic under the GIL


def pick_target(targets: tuple[str, ...], start: int) -> str | None:
    """The first target from `start` on whose circuit lets a request through, or None."""
    count = len(targets)
    for offset in range(count):
        target = targets[(start + offset) % count]
        if circuit_allow(target=target):
            return target
    return None


def backoff_delay(attempt: int) -> float:
    """Full-jitter exponential backoff before attempt `attempt + 1`."""
    return random.uniform(0, min(BACKOFF_CAP_SECONDS, BACKOFF_BASE_SECONDS * 2**attempt))
