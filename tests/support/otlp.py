"""A real OTLP/HTTP trace collector on 127.0.0.1: POST /v1/traces with a protobuf
`ExportTraceServiceRequest` (opentelemetry-proto), every span kept as a `ReceivedSpan`."""

from __future__ import annotations

import contextlib
import gzip
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.trace.v1.trace_pb2 import Span, Status

from tests.support.servers import HttpServer, RecordedRequest, Reply

KINDS = {
    Span.SPAN_KIND_INTERNAL: "internal",
    Span.SPAN_KIND_SERVER: "server",
    Span.SPAN_KIND_CLIENT: "client",
    Span.SPAN_KIND_PRODUCER: "producer",
    Span.SPAN_KIND_CONSUMER: "consumer",
}


@dataclass(frozen=True)
class ReceivedSpan:
    name: str
    kind: str
    trace_id: str  # hex, as in a traceparent
    span_id: str
    parent_span_id: str  # "" for a root span
    attributes: dict[str, Any]
    error: bool
    events: tuple[str, ...]  # event names ("exception", ...)
    service_name: str


def _value(any_value: Any) -> Any:
    field = any_value.WhichOneof("value")
    return getattr(any_value, field) if field else None


class OtlpCollector:
    def __init__(self) -> None:
        self.spans: list[ReceivedSpan] = []
        self.posts: list[RecordedRequest] = []
        self._lock = threading.Lock()
        self.server = HttpServer(self._handle)
        self.url = self.server.url  # what OTEL_EXPORTER_OTLP_ENDPOINT points at

    def _handle(self, request: RecordedRequest) -> Reply:
        if request.method != "POST" or request.path != "/v1/traces":
            return Reply(404, b"")
        body = request.body
        if (request.header("Content-Encoding") or "").lower() == "gzip":
            body = gzip.decompress(body)
        message = ExportTraceServiceRequest()
        message.ParseFromString(body)
        received = []
        for resource_spans in message.resource_spans:
            resource = {a.key: _value(a.value) for a in resource_spans.resource.attributes}
            for scope_spans in resource_spans.scope_spans:
                for span in scope_spans.spans:
                    received.append(
                        ReceivedSpan(
                            name=span.name,
                            kind=KINDS.get(span.kind, "unspecified"),
                            trace_id=span.trace_id.hex(),
                            span_id=span.span_id.hex(),
                            parent_span_id=span.parent_span_id.hex(),
                            attributes={a.key: _value(a.value) for a in span.attributes},
                            error=span.status.code == Status.STATUS_CODE_ERROR,
                            events=tuple(event.name for event in span.events),
                            service_name=resource.get("service.name", ""),
                        )
                    )
        with self._lock:
            self.posts.append(request)
            self.spans.extend(received)
        answer = ExportTraceServiceResponse().SerializeToString()
        return Reply(200, answer, [("Content-Type", "application/x-protobuf")])

    def named(self, name: str) -> list[ReceivedSpan]:
        with self._lock:
            return [span for span in self.spans if span.name == name]

    def wait_for(self, name: str, count: int = 1, seconds: float = 20) -> list[ReceivedSpan]:
        """The spans called `name` once at least `count` arrived (fails after `seconds`)."""
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            found = self.named(name)
            if len(found) >= count:
                return found
            time.sleep(0.05)
        with self._lock:
            names = sorted({span.name for span in self.spans})
        raise AssertionError(f"no {count} span(s) {name!r} arrived; received: {names}")

    def close(self) -> None:
        self.server.close()


@contextlib.contextmanager
def running_collector() -> Iterator[OtlpCollector]:
    """A collector for one test (test modules wrap it in their `otlp_collector` fixture)."""
    collector = OtlpCollector()
    try:
        yield collector
    finally:
        collector.close()
