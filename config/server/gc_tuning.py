"""The cyclic garbage collector of a web worker, tuned once the worker has started.

Profiled under load (benchmarks/gateway_profile.py, docs/gateway-proxy.md "Server"), CPython's
default gen0 threshold (700 net allocations) makes a busy worker collect every few requests, and
each older-generation pass walks every long-lived object: Django's, the route table's, and the
per-connection objects of thousands of open connections. Two things change that:

* `gc.freeze()` after start-up moves everything allocated while importing and starting (apps,
  settings, the route table) to the permanent generation: never scanned again, never freed
  (it is not garbage anyway);
* `WEB_GC_THRESHOLDS` (default 50000,20,100): a collection every 50 000 net allocations instead
  of 700. Memory held by garbage cycles between collections stays bounded by that count (a few
  MB); reference counting still frees everything else at once.
"""

from __future__ import annotations

import gc
import logging

logger = logging.getLogger("gatehouse.server")


def parse_thresholds(value: str) -> tuple[int, int, int] | None:
    """ "a,b,c" → (a, b, c); empty → None (CPython's defaults). Raises ValueError otherwise."""
    value = value.strip()
    if not value:
        return None
    problem = f"WEB_GC_THRESHOLDS must be three positive integers, got {value!r}"
    try:
        parts = [int(part) for part in value.split(",")]
    except ValueError:
        raise ValueError(problem) from None
    if len(parts) != 3 or any(part < 1 for part in parts):
        raise ValueError(problem)
    return parts[0], parts[1], parts[2]


def gc_tune(value: str) -> tuple[int, int, int] | None:
    """Freeze what start-up allocated and set the thresholds; returns what was set."""
    thresholds = parse_thresholds(value)
    if thresholds is None:
        return None
    gc.collect()
    gc.freeze()
    gc.set_threshold(*thresholds)
    logger.debug("gc frozen (%d objects), thresholds %s", gc.get_freeze_count(), thresholds)
    return thresholds
