"""W3C trace context: the trace of the work in progress (a contextvar, next to the correlation id)
and `trace_context`, which continues a `traceparent` (same trace id, new span id) or starts one.

Both the gateway hop (gateway/asgi.py) and the Django side (common/middleware.py TraceMiddleware)
begin their requests with it; the log lines carry the trace id (common/logging.py).
"""

from __future__ import annotations

import re
import secrets
from contextvars import ContextVar
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class TraceContext:
    trace_id: str
    parent_span_id: str  # the client's span ("" when the trace starts here)
    span_id: str  # this hop's span: the parent the next hop sees
    flags: str

    def traceparent(self) -> str:
        return f"00-{self.trace_id}-{self.span_id}-{self.flags}"


_trace: ContextVar[TraceContext | None] = ContextVar("trace", default=None)
_TRACEPARENT = re.compile(r"^([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})(-.*)?$")


def get_trace_id() -> str:
    trace = _trace.get()
    return trace.trace_id if trace is not None else ""


def current_trace() -> TraceContext | None:
    """The trace context of the request in progress (None outside one)."""
    return _trace.get()


def set_trace(trace: TraceContext):  # type: ignore[no-untyped-def]
    """Make `trace` the current context's; returns the token to reset it with."""
    return _trace.set(trace)


def reset_trace(token) -> None:  # type: ignore[no-untyped-def]
    _trace.reset(token)


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
