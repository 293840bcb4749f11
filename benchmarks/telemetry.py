"""What a span costs: disabled (OTEL_EXPORTER_OTLP_ENDPOINT unset) against a bare function call,
and enabled (the SDK's TracerProvider + BatchSpanProcessor) per span.

    .venv/bin/python -m benchmarks.telemetry [--calls 200000]

Enabled, the exporter is one that drops the batches (no network in the figure: the OTLP/HTTP
export runs on the batch processor's own thread, off the request path). Prints ns per call and
the ratios; docs/telemetry.md quotes a run.
"""

from __future__ import annotations

import argparse
import os
import time
from typing import Any

from common import telemetry

ATTRIBUTES_NOTE = "a literal attributes={...} dict at the call site is built even when disabled"


class _DroppingExporter:
    """The SpanExporter interface, sending nothing (the batching and encoding-free cost only)."""

    def export(self, spans: Any) -> Any:
        from opentelemetry.sdk.trace.export import SpanExportResult

        return SpanExportResult.SUCCESS

    def shutdown(self) -> None:
        return None

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return True


def _bare() -> None:
    return None


def _per_call(function: Any, calls: int) -> float:
    best = float("inf")
    for _ in range(5):
        started = time.perf_counter_ns()
        for _ in range(calls):
            function()
        best = min(best, (time.perf_counter_ns() - started) / calls)
    return best


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--calls", type=int, default=100_000)
    args = parser.parse_args()
    for name in telemetry.ENDPOINT_VARIABLES:
        os.environ.pop(name, None)
    telemetry.shutdown()

    span = telemetry.span

    def disabled() -> None:
        with span("gateway.request", kind="server"):
            pass

    def disabled_attributes() -> None:
        with span("gateway.request", kind="server", attributes={"http.request.method": "GET"}) as s:
            s.set_status_code(200)

    bare = _per_call(_bare, args.calls)
    off = _per_call(disabled, args.calls)
    off_attrs = _per_call(disabled_attributes, args.calls)

    os.environ["OTEL_BSP_MAX_QUEUE_SIZE"] = str(args.calls * 2)  # measure spans, not drops
    telemetry.init(exporter=_DroppingExporter())
    on_calls = max(1, args.calls // 10)

    def enabled() -> None:
        with span("gateway.request", kind="server", attributes={"http.request.method": "GET"}) as s:
            s.set_status_code(200)

    def enabled_nested() -> None:
        with span("gateway.request", kind="server"), span("gateway.upstream", kind="client"):
            telemetry.inject({})

    on = _per_call(enabled, on_calls)
    on_nested = _per_call(enabled_nested, on_calls)
    telemetry.shutdown()

    print(f"bare function call                 {bare:8.0f} ns")
    print(f"disabled span (with)               {off:8.0f} ns   {off / bare:5.1f}x a bare call")
    print(f"disabled span + attributes/status  {off_attrs:8.0f} ns   {off_attrs / bare:5.1f}x a bare call")
    print(f"  ({ATTRIBUTES_NOTE})")
    print(f"enabled span + attributes/status   {on:8.0f} ns   {on / off:5.0f}x disabled")
    print(f"enabled server+client span, inject {on_nested:8.0f} ns   (the gateway's two spans per request)")


if __name__ == "__main__":
    main()
