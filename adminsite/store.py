"""Where the dashboard's figures live across processes: Redis when configured, else files in var/.

Traffic: one Redis hash per minute (`dashboard:traffic:{minute}`), fields `{route}\t{figure}`
incremented by every process (HINCRBY, so the sum over processes is made by Redis); figures are
`n` (requests), `e5` (5xx), `e4` (4xx) and `b{index}` (latency histogram bucket, see
`latency_bucket`). Circuit states: one JSON value per process (`dashboard:circuits:{process}`),
the whole snapshot of that process's non-closed circuits, rewritten on every change.

Embedded mode (no Redis): each process writes its own files under `VAR_DIR/dashboard/` (its last
hour of minutes and its circuit snapshot, replaced atomically) and the reader sums the files of
every process, the way Prometheus' multiprocess mode does.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from django.conf import settings

TRAFFIC_PREFIX = "dashboard:traffic:"
CIRCUITS_PREFIX = "dashboard:circuits:"
WINDOW_MINUTES = 60
TRAFFIC_KEY_TTL = 2 * 3600
CIRCUITS_KEY_TTL = 3600

# Latency histogram: bucket i holds durations up to 0.5 ms * 1.25**i (25 % wide, so a p99 read
# from it is within 25 % of the true one); the last bucket holds everything slower.
_BUCKET_BASE_MS = 0.5
_BUCKET_RATIO = 1.25
_BUCKET_LAST = 64  # 0.5 ms * 1.25**64 ≈ 790 s
_LOG_RATIO = math.log(_BUCKET_RATIO)


def latency_bucket(duration_seconds: float) -> int:
    milliseconds = duration_seconds * 1000.0
    if milliseconds <= _BUCKET_BASE_MS:
        return 0
    return min(_BUCKET_LAST, math.ceil(math.log(milliseconds / _BUCKET_BASE_MS) / _LOG_RATIO - 1e-9))


def latency_bucket_upper_ms(index: int) -> float:
    return _BUCKET_BASE_MS * _BUCKET_RATIO**index


@dataclass
class MinuteCell:
    """One route's figures in one minute."""

    requests: int = 0
    errors_5xx: int = 0
    errors_4xx: int = 0
    buckets: dict[int, int] = field(default_factory=dict)

    def add(self, other: MinuteCell) -> None:
        self.requests += other.requests
        self.errors_5xx += other.errors_5xx
        self.errors_4xx += other.errors_4xx
        for index, count in other.buckets.items():
            self.buckets[index] = self.buckets.get(index, 0) + count

    def to_fields(self) -> dict[str, int]:
        fields = {"n": self.requests, "e5": self.errors_5xx, "e4": self.errors_4xx}
        fields.update({f"b{index}": count for index, count in self.buckets.items()})
        return {name: value for name, value in fields.items() if value}

    def set_field(self, name: str, value: int) -> None:
        if name == "n":
            self.requests += value
        elif name == "e5":
            self.errors_5xx += value
        elif name == "e4":
            self.errors_4xx += value
        elif name.startswith("b") and name[1:].isdigit():
            index = int(name[1:])
            self.buckets[index] = self.buckets.get(index, 0) + value


# (minute number since the epoch, route pattern) -> figures
Traffic = dict[tuple[int, str], MinuteCell]


def process_name() -> str:
    return f"{os.uname().nodename}:{os.getpid()}"


def _redis() -> Any:
    from django_redis import get_redis_connection

    return get_redis_connection("default")


def _directory() -> Path:
    return Path(str(settings.VAR_DIR)) / "dashboard"


def _file_name(process: str) -> str:
    return process.replace(":", "-").replace("/", "-")


def _write_json(path: Path, value: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.tmp")
    temporary.write_text(json.dumps(value))
    temporary.replace(path)


# --- writing (from the recorder's flusher thread) ------------------------------------------------
def traffic_add(*, increments: Traffic, history: Traffic, process: str) -> None:
    """Add one flush's `increments`; `history` is this process's whole last hour (files only)."""
    if settings.REDIS_URL:
        pipeline = _redis().pipeline(transaction=False)
        for (minute, route), cell in increments.items():
            key = f"{TRAFFIC_PREFIX}{minute}"
            for name, value in cell.to_fields().items():
                pipeline.hincrby(key, f"{route}\t{name}", value)
        for minute in {minute for minute, _ in increments}:
            pipeline.expire(f"{TRAFFIC_PREFIX}{minute}", TRAFFIC_KEY_TTL)
        pipeline.execute()
        return
    rows = [[minute, route, cell.to_fields()] for (minute, route), cell in history.items()]
    _write_json(_directory() / f"traffic-{_file_name(process)}.json", rows)


def circuits_put(*, process: str, states: dict[str, dict[str, Any]]) -> None:
    """Replace this process's circuit snapshot (`states`: target -> state, failures, open_until)."""
    snapshot = {"process": process, "updated_at": time.time(), "states": states}
    if settings.REDIS_URL:
        _redis().set(f"{CIRCUITS_PREFIX}{process}", json.dumps(snapshot), ex=CIRCUITS_KEY_TTL)
        return
    _write_json(_directory() / f"circuits-{_file_name(process)}.json", snapshot)


# --- reading (the dashboard view) ----------------------------------------------------------------
def traffic_read(*, minutes: Iterable[int]) -> Traffic:
    """Every process's figures for `minutes`, summed."""
    wanted = list(minutes)
    traffic: Traffic = {}
    if settings.REDIS_URL:
        pipeline = _redis().pipeline(transaction=False)
        for minute in wanted:
            pipeline.hgetall(f"{TRAFFIC_PREFIX}{minute}")
        for minute, fields in zip(wanted, pipeline.execute(), strict=True):
            for raw_name, raw_value in fields.items():
                route, _, name = raw_name.decode().rpartition("\t")
                traffic.setdefault((minute, route), MinuteCell()).set_field(name, int(raw_value))
        return traffic
    window = set(wanted)
    for path in _files("traffic-"):
        with contextlib.suppress(OSError, ValueError):
            for minute, route, fields in json.loads(path.read_text()):
                if minute in window:
                    cell = traffic.setdefault((minute, route), MinuteCell())
                    for name, value in fields.items():
                        cell.set_field(name, int(value))
    return traffic


def circuits_read() -> list[dict[str, Any]]:
    """Every live process's circuit snapshot (those not rewritten for an hour are left out)."""
    snapshots: list[dict[str, Any]] = []
    if settings.REDIS_URL:
        client = _redis()
        keys = list(client.scan_iter(match=f"{CIRCUITS_PREFIX}*", count=500))
        for raw in client.mget(keys) if keys else []:
            if raw:
                with contextlib.suppress(ValueError):
                    snapshots.append(json.loads(raw))
        return snapshots
    for path in _files("circuits-"):
        with contextlib.suppress(OSError, ValueError):
            snapshots.append(json.loads(path.read_text()))
    return snapshots


def _files(prefix: str) -> list[Path]:
    directory = _directory()
    if not directory.is_dir():
        return []
    oldest = time.time() - CIRCUITS_KEY_TTL
    paths = []
    for path in directory.glob(f"{prefix}*.json"):
        with contextlib.suppress(OSError):
            if path.stat().st_mtime >= oldest:
                paths.append(path)
    return paths
