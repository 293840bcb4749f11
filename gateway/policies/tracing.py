"""W3C trace context: continue the client's `traceparent` (same trace id, new span id) or start one.

`tracestate` passes through untouched. With OTEL_EXPORTER_OTLP_ENDPOINT set, the gateway hop and
the upstream call are also exported as spans by the OpenTelemetry SDK (common/telemetry.py, with
this TraceContext's ids); unset, the SDK is never imported.
"""

from __future__ import annotations

import re
import secrets
from dataclasses import dataclass

_TRACEPARENT = re.compile(r"^([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})(-.*)?$")


@dataclass(frozen=True, slots=True)
class TraceContext:
    trace_id: str
    parent_span_id: str  # the client's span ("" when the trace starts here)
    span_id: str  # the gateway's span: the parent the upstream sees
    flags: str

    def traceparent(self) -> str:
        return f"00-{self.trace_id}-{self.span_id}-{self.flags}"


def trace_context(traceparent: str | None) -> TraceContext:
    """Continue a valid traceparent, otherwise start a new trace (sampled)."""
    if traceparent:
        found = _TRACEPARENT.match(traceparent.strip())
        if found:
            version, trace_id, parent, flags, rest = found.groups()
            if (
                version != "ff"
                and not (version == "00" and rest)
                and trace_id != "0" * 32
                and parent != "0" * 16
            ):
                return TraceContext(trace_id, parent, secrets.token_hex(8), flags)
    return TraceContext(secrets.token_hex(16), "", secrets.token_hex(8), "01")


def otel_enabled() -> bool:
    """Whether this process exports spans (common/telemetry.py decides; kept for callers)."""
    from common import telemetry

    return telemetry.enabled()
