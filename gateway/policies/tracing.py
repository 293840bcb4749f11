"""W3C trace context for the gateway hop: continue the client's `traceparent` (same trace id, new
span id) or start one; `tracestate` passes through untouched.

The parsing lives in common/tracing.py (the Django side begins its requests the same way). With
OTEL_EXPORTER_OTLP_ENDPOINT set, the gateway hop and the upstream call are also exported as spans
by the OpenTelemetry SDK (common/telemetry.py, with this TraceContext's ids); unset, the SDK is
never imported.
"""

from __future__ import annotations

from common.tracing import TraceContext, trace_context

__all__ = ["TraceContext", "trace_context"]
