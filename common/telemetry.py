"""OpenTelemetry spans, exported over OTLP/HTTP when OTEL_EXPORTER_OTLP_ENDPOINT is set.

Unset (the default), nothing of OpenTelemetry is imported and `span()` returns one shared no-op
object: a span costs a function call (benchmarks/telemetry.py, docs/telemetry.md).

Set, `init()` builds the SDK's TracerProvider (sampler from OTEL_TRACES_SAMPLER /
OTEL_TRACES_SAMPLER_ARG, resource from OTEL_SERVICE_NAME — default "gatehouse" — and
OTEL_RESOURCE_ATTRIBUTES), a BatchSpanProcessor (OTEL_BSP_*) and the OTLP/HTTP protobuf exporter
(OTEL_EXPORTER_OTLP_[TRACES_]ENDPOINT, _HEADERS, _TIMEOUT). It is called once per process after
fork: by each web server worker in its ASGI lifespan startup (config/asgi.py) and by each Celery
worker process (config/celery.py); `shutdown()` flushes what is buffered.

    with telemetry.span("order.create", attributes={"order.currency": "EUR"}) as s:
        ...
        s.set_attribute("order.id", str(order.id))

The current span lives in a contextvar (the SDK's context), so nesting works the same in threads
and in asyncio tasks. An exception leaving the block is recorded on the span with status ERROR.
"""

from __future__ import annotations

import contextvars
import functools
import logging
import os
from collections.abc import Callable
from typing import Any, Protocol, TypeVar

F = TypeVar("F", bound=Callable[..., Any])

logger = logging.getLogger("gatehouse.telemetry")

ENDPOINT_VARIABLES = ("OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
DEFAULT_SERVICE_NAME = "gatehouse"
_SHUTDOWN_FLUSH_MILLIS = 5000


class TraceIds(Protocol):
    """What the gateway already decided for its hop (gateway/policies/tracing.py TraceContext)."""

    trace_id: str  # 32 hex digits
    parent_span_id: str  # 16 hex digits, "" when the trace starts here
    span_id: str  # 16 hex digits: this span's id
    flags: str  # 2 hex digits


class _NoopSpan:
    """Every method does nothing; one instance serves every disabled span."""

    __slots__ = ()
    traceparent = None

    def __enter__(self) -> _NoopSpan:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def set_attribute(self, key: str, value: Any) -> None:
        return None

    def set_status_code(self, status: int) -> None:
        return None

    def set_error(self, description: str = "") -> None:
        return None

    def record_exception(self, exc: BaseException) -> None:
        return None


NOOP_SPAN = _NoopSpan()


class _LoggedTrace(_NoopSpan):
    """Export off, work that continues a traceparent (a message's, an outbox event's, a saga's):
    nothing is recorded, but the trace context is current while it runs, so its log lines carry
    the trace id and what it publishes carries the trace on (`carried_traceparent`)."""

    __slots__ = ("_parent", "_token")

    def __init__(self, parent_traceparent: str) -> None:
        self._parent = parent_traceparent
        self._token: Any = None

    def __enter__(self) -> _LoggedTrace:
        from common.tracing import set_trace, trace_context

        self._token = set_trace(trace_context(self._parent))
        return self

    def __exit__(self, *exc: object) -> None:
        from common.tracing import reset_trace

        if self._token is not None:
            reset_trace(self._token)
            self._token = None
        return None

# Module state: None while disabled (the only thing the hot path looks at).
_tracer: Any = None
_provider: Any = None
_pid: int | None = None
# (trace id, span id) the next span must take, set only around start_span (see _IdGenerator).
_forced_ids: contextvars.ContextVar[tuple[int, int] | None] = contextvars.ContextVar(
    "telemetry_forced_ids", default=None
)


def enabled() -> bool:
    return _tracer is not None


def configured() -> bool:
    """True when the environment asks for export (what init() looks at)."""
    return any(os.environ.get(name) for name in ENDPOINT_VARIABLES) and (
        os.environ.get("OTEL_SDK_DISABLED", "").lower() != "true"
    )


def init(*, exporter: Any = None) -> bool:
    """Start exporting in this process if configured (idempotent per process); True when on.

    Call it after fork: a provider created in a parent would have its export thread in the parent.
    `exporter` replaces the OTLP one (benchmarks only).
    """
    global _tracer, _provider, _pid
    if _tracer is not None and _pid == os.getpid():
        return True
    if exporter is None and not configured():
        return False
    from opentelemetry.sdk.resources import SERVICE_NAME, Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    if exporter is None:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        exporter = OTLPSpanExporter()
    resource = Resource.create({SERVICE_NAME: os.environ.get("OTEL_SERVICE_NAME") or DEFAULT_SERVICE_NAME})
    provider = TracerProvider(resource=resource, id_generator=_id_generator())
    provider.add_span_processor(BatchSpanProcessor(exporter))
    _load_api()
    _provider, _pid = provider, os.getpid()
    _tracer = provider.get_tracer("gatehouse")
    logger.info("OpenTelemetry span export on (service %s)", resource.attributes.get(SERVICE_NAME))
    return True


def force_flush(timeout_millis: int = _SHUTDOWN_FLUSH_MILLIS) -> bool:
    if _provider is None:
        return True
    return bool(_provider.force_flush(timeout_millis))


def shutdown() -> None:
    """Flush buffered spans (bounded wait) and stop exporting; a no-op when disabled."""
    global _tracer, _provider, _pid
    provider, _tracer, _provider, _pid = _provider, None, None, None
    if provider is None:
        return
    try:
        provider.force_flush(_SHUTDOWN_FLUSH_MILLIS)
        provider.shutdown()
    except Exception:  # never let telemetry break a shutdown
        logger.warning("OpenTelemetry shutdown failed", exc_info=True)


def span(
    name: str,
    *,
    kind: str = "internal",
    attributes: dict[str, Any] | None = None,
    parent_traceparent: str | None = None,
    trace: TraceIds | None = None,
) -> Any:
    """A context manager for one span (sync `with` — works inside async code too).

    kind: "internal" | "server" | "client" | "producer" | "consumer".
    parent_traceparent: a W3C traceparent to continue (a message's header); else the current span.
    trace: ids already chosen for this hop (the gateway's TraceContext): the span takes its
    trace id and span id, with the client's span as remote parent, so the exported span is the
    one the log lines and the disabled-mode traceparent name.
    """
    if _tracer is None:
        return _LoggedTrace(parent_traceparent) if parent_traceparent else NOOP_SPAN
    return _Span(name, kind, attributes, parent_traceparent, trace)


def traced(name: str, *, kind: str = "internal") -> Callable[[F], F]:
    """Decorator: each call of the function runs in a span `name` (a plain call when disabled)."""

    def decorate(function: F) -> F:
        @functools.wraps(function)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            if _tracer is None:
                return function(*args, **kwargs)
            with _Span(name, kind, None, None, None):
                return function(*args, **kwargs)

        return wrapper  # type: ignore[return-value]

    return decorate


def set_attribute(key: str, value: Any) -> None:
    """Set an attribute on the current span (nothing when disabled or outside a span)."""
    if _tracer is not None:
        _api.get_current_span().set_attribute(key, value)


def current_traceparent() -> str | None:
    """The traceparent naming the current span (None when disabled or outside any span)."""
    if _tracer is None:
        return None
    return _format(_api.get_current_span().get_span_context())


def carried_traceparent() -> str | None:
    """The traceparent that work started now must carry on (an outbox event, a message): the
    current span's when exporting, else the request's W3C trace context (common/tracing.py),
    None outside any request or span."""
    value = current_traceparent()
    if value is None:
        from common.tracing import current_trace

        trace = current_trace()
        value = trace.traceparent() if trace is not None else None
    return value


def inject(headers: dict[str, str]) -> None:
    """Point the outgoing `traceparent` at the current span (leaves `headers` alone when disabled)."""
    if _tracer is None:
        return
    value = current_traceparent()
    if value is not None:
        for existing in [n for n in headers if n.lower() == "traceparent"]:
            del headers[existing]
        headers["traceparent"] = value


def inject_pairs(headers: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """`inject` for header pairs (the async upstream client's form): the same list when disabled."""
    if _tracer is None:
        return headers
    value = current_traceparent()
    if value is None:
        return headers
    return [*((n, v) for n, v in headers if n.lower() != "traceparent"), ("traceparent", value)]


# --- enabled implementation (imports the SDK lazily) ---------------------------------------------

_api: Any = None  # opentelemetry.trace, once enabled
_context_api: Any = None
_SpanKind: Any = None
_Status: Any = None
_StatusCode: Any = None


def _load_api() -> None:
    global _api, _context_api, _SpanKind, _Status, _StatusCode
    from opentelemetry import context as context_api
    from opentelemetry import trace as trace_api

    _api, _context_api = trace_api, context_api
    _SpanKind, _Status, _StatusCode = trace_api.SpanKind, trace_api.Status, trace_api.StatusCode


def _format(context: Any) -> str | None:
    if not context.is_valid:
        return None
    # Only the sampled bit: level-1 W3C receivers expect the other flag bits zero (the SDK also
    # sets the level-2 "random" bit), and it matches what the gateway sends when export is off.
    return f"00-{context.trace_id:032x}-{context.span_id:016x}-{int(context.trace_flags) & 0x01:02x}"


def _id_generator() -> Any:
    from opentelemetry.sdk.trace.id_generator import RandomIdGenerator

    class _IdGenerator(RandomIdGenerator):
        """Random ids, except for a span whose ids the caller already chose (the gateway hop)."""

        def generate_span_id(self) -> int:
            forced = _forced_ids.get()
            return forced[1] if forced else super().generate_span_id()

        def generate_trace_id(self) -> int:
            forced = _forced_ids.get()
            return forced[0] if forced else super().generate_trace_id()

    return _IdGenerator()


def _parent_context(parent_traceparent: str | None, trace: TraceIds | None) -> Any:
    trace_api = _api
    if trace is not None:
        if not trace.parent_span_id:
            return _context_api.Context()  # a new trace: a root span (its ids are forced)
        parent = trace_api.SpanContext(
            trace_id=int(trace.trace_id, 16),
            span_id=int(trace.parent_span_id, 16),
            is_remote=True,
            trace_flags=trace_api.TraceFlags(int(trace.flags, 16) & 0x01),
        )
        return trace_api.set_span_in_context(trace_api.NonRecordingSpan(parent), _context_api.Context())
    if parent_traceparent:
        from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

        return TraceContextTextMapPropagator().extract({"traceparent": parent_traceparent})
    return None  # the current span


class _Span:
    __slots__ = ("_span", "_scope", "_logged", "_log_token")

    def __init__(
        self,
        name: str,
        kind: str,
        attributes: dict[str, Any] | None,
        parent_traceparent: str | None,
        trace: TraceIds | None,
    ) -> None:
        context = _parent_context(parent_traceparent, trace)
        token = (
            _forced_ids.set((int(trace.trace_id, 16), int(trace.span_id, 16))) if trace is not None else None
        )
        try:
            self._span = _tracer.start_span(
                name, context=context, kind=_SpanKind[kind.upper()], attributes=attributes
            )
        finally:
            if token is not None:
                _forced_ids.reset(token)
        self._scope: Any = None
        # A span continuing a traceparent starts the log lines' trace too (the gateway hop and
        # Django requests set theirs themselves, from the same ids).
        self._logged = bool(parent_traceparent) and trace is None
        self._log_token: Any = None

    def __enter__(self) -> _Span:
        self._scope = _api.use_span(
            self._span, end_on_exit=True, record_exception=True, set_status_on_exception=True
        )
        self._scope.__enter__()
        if self._logged:
            from common.tracing import TraceContext, set_trace

            ids = self._span.get_span_context()
            trace_id, span_id = f"{ids.trace_id:032x}", f"{ids.span_id:016x}"
            flags = f"{int(ids.trace_flags) & 1:02x}"
            self._log_token = set_trace(TraceContext(trace_id, "", span_id, flags))
        return self

    def __exit__(self, *exc: Any) -> Any:
        try:
            if self._log_token is not None:
                from common.tracing import reset_trace

                token, self._log_token = self._log_token, None
                reset_trace(token)
        finally:
            return self._scope.__exit__(*exc)  # noqa: B012  the span ends whatever the reset did

    @property
    def traceparent(self) -> str | None:
        return _format(self._span.get_span_context())

    def set_attribute(self, key: str, value: Any) -> None:
        self._span.set_attribute(key, value)

    def set_status_code(self, status: int) -> None:
        """`http.response.status_code`, and status ERROR as the HTTP conventions say (a server
        span on 5xx, a client span on 4xx and 5xx)."""
        self._span.set_attribute("http.response.status_code", status)
        limit = 500 if self._span.kind is _SpanKind.SERVER else 400
        if status >= limit:
            self.set_error(str(status))

    def set_error(self, description: str = "") -> None:
        self._span.set_status(_Status(_StatusCode.ERROR, description or None))

    def record_exception(self, exc: BaseException) -> None:
        self._span.record_exception(exc)
