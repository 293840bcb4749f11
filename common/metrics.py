"""Prometheus exposition, multiprocess-safe when PROMETHEUS_MULTIPROC_DIR is set.

scripts/run gives every process of the Procfile (web workers, Celery worker, beat, consumers) the
same directory, so counters incremented outside the web server are summed here too.

Apps define their counters/histograms at import time in their own modules; figures that live in
the database (outbox backlog, …) are read at scrape time by collectors registered here.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterable

from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, CollectorRegistry, generate_latest
from prometheus_client.metrics_core import Metric

logger = logging.getLogger(__name__)
_scrape_collectors: list[Callable[[], Iterable[Metric]]] = []


class _ScrapeTimeCollector:
    def collect(self) -> Iterable[Metric]:
        for collect in list(_scrape_collectors):
            try:
                yield from collect()
            except Exception:  # a broken figure must not hide the others
                logger.exception("metrics collector %r failed", collect)


def register_scrape_collector(collect: Callable[[], Iterable[Metric]]) -> None:
    """Register a function yielding metric families computed when /metrics is read."""
    if collect not in _scrape_collectors:
        _scrape_collectors.append(collect)


def render_metrics() -> tuple[bytes, str]:
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        from prometheus_client import multiprocess

        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
    else:
        registry = REGISTRY
    scrape_registry = CollectorRegistry()
    scrape_registry.register(_ScrapeTimeCollector())
    return generate_latest(registry) + generate_latest(scrape_registry), CONTENT_TYPE_LATEST
