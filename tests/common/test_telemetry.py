"""common/telemetry.py: spans exported over OTLP/HTTP to a real collector, and nothing at all
when OTEL_EXPORTER_OTLP_ENDPOINT is unset (docs/telemetry.md)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from decimal import Decimal

import pytest

from common import telemetry
from orders.models import Order
from orders.services import OrderItemData, order_create
from outbox.models import OutboxEvent
from outbox.relay import outbox_relay_batch
from tests.outbox.factories import publish_events
from tests.support.otlp import running_collector
from tests.support.servers import ROOT, free_port

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def otlp_collector():
    with running_collector() as collector:
        yield collector


@pytest.fixture
def telemetry_on(otlp_collector, monkeypatch):
    """Export on in this process, to the test collector, flushed every 50 ms."""
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", otlp_collector.url)
    monkeypatch.setenv("OTEL_BSP_SCHEDULE_DELAY", "50")
    monkeypatch.setenv("OTEL_SERVICE_NAME", "gatehouse-test")
    assert telemetry.init()
    yield otlp_collector
    telemetry.shutdown()


def _order() -> Order:
    return order_create(
        user_id="u1",
        tenant_id="t1",
        store_id=uuid.uuid4(),
        currency="USD",
        delivery_address="1 Main St",
        contact_phone="+14155550100",
        items=[OrderItemData(sku="S1", name="Widget", quantity=2, unit_price=Decimal("5.00"))],
    )


def test_order_creation_is_exported_as_a_span_with_its_order_id(telemetry_on):
    order = _order()

    (span,) = telemetry_on.wait_for("order.create")
    assert span.attributes["order.id"] == str(order.id)
    assert span.attributes["order.item_count"] == 1
    assert span.service_name == "gatehouse-test"
    assert span.kind == "internal" and not span.error


def test_a_relay_batch_is_a_producer_span_inside_the_task_run(telemetry_on):
    from outbox.tasks import outbox_relay

    publish_events(count=5, aggregates=2)
    outbox_relay.apply()  # a task run, as a worker runs it (signals included)

    (task,) = telemetry_on.wait_for("celery.task outbox.tasks.outbox_relay")
    batches = telemetry_on.wait_for("outbox.relay_batch")
    assert task.kind == "consumer" and task.attributes["celery.state"] == "SUCCESS"
    assert sum(batch.attributes["outbox.published"] for batch in batches) == 5
    for batch in batches:
        assert batch.kind == "producer"
        assert batch.attributes["outbox.publisher"] == "LogPublisher"
        assert (batch.trace_id, batch.parent_span_id) == (task.trace_id, task.span_id)
    assert not OutboxEvent.objects.filter(published_at__isnull=True).exists()


def test_each_delivery_is_a_span_in_the_trace_stored_with_its_event(
    telemetry_on, settings, http_server_factory
):
    from django.db import transaction

    from outbox.publishers import close_cached_publisher
    from outbox.services import outbox_publish
    from tests.support.servers import Reply

    receiver = http_server_factory(lambda request: Reply(204))
    settings.OUTBOX_PUBLISHER, settings.OUTBOX_WEBHOOK_SECRET = "webhook", "s3cret"
    settings.OUTBOX_WEBHOOK_URL = f"{receiver.url}/hooks"
    writer = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
    with transaction.atomic(), telemetry.span("order.create") as writing:
        traced = outbox_publish(aggregatetype="order", aggregateid="1", type="order.created", payload={})
    with transaction.atomic():
        given = outbox_publish(
            aggregatetype="order",
            aggregateid="2",
            type="order.created",
            payload={},
            headers={"traceparent": writer},
        )
    try:
        assert outbox_relay_batch().published == 2
    finally:
        close_cached_publisher()

    (created,) = telemetry_on.wait_for("order.create")
    assert traced.headers["traceparent"] == writing.traceparent
    deliveries = {
        span.attributes["outbox.event_id"]: span for span in telemetry_on.wait_for("outbox.deliver", 2)
    }
    first, second = deliveries[str(traced.id)], deliveries[str(given.id)]
    assert (first.kind, first.trace_id, first.parent_span_id) == (
        "producer",
        created.trace_id,
        created.span_id,
    )
    assert (second.trace_id, second.parent_span_id) == (
        "4bf92f3577b34da6a3ce929d0e0e4736",
        "00f067aa0ba902b7",
    )
    assert first.attributes["http.response.status_code"] == 204 and not first.error
    sent = {request.header("traceparent") for request in receiver.requests}
    assert sent == {f"00-{span.trace_id}-{span.span_id}-01" for span in (first, second)}


def test_a_relay_run_with_nothing_to_relay_sends_no_batch_span(telemetry_on):
    assert outbox_relay_batch().claimed == 0
    with telemetry.span("marker"):
        pass

    telemetry_on.wait_for("marker")
    assert telemetry_on.named("outbox.relay_batch") == []


def test_an_exception_is_recorded_and_the_span_marked_error(telemetry_on):
    with pytest.raises(ValueError), telemetry.span("saga.step", attributes={"saga.step": "reserve"}):
        raise ValueError("boom")

    (span,) = telemetry_on.wait_for("saga.step")
    assert span.error and span.events == ("exception",)
    assert span.attributes["saga.step"] == "reserve"


def test_a_task_span_continues_the_traceparent_it_was_enqueued_with(telemetry_on):
    from outbox.tasks import outbox_relay

    parent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
    outbox_relay.apply(headers={"traceparent": parent})

    (task,) = telemetry_on.wait_for("celery.task outbox.tasks.outbox_relay")
    assert (task.trace_id, task.parent_span_id) == ("4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7")


def test_nested_spans_and_the_outgoing_traceparent(telemetry_on):
    headers = {"Traceparent": "00-" + "1" * 32 + "-" + "2" * 16 + "-01"}
    with telemetry.span("outer") as outer, telemetry.span("inner", kind="client") as inner:
        telemetry.inject(headers)
        assert telemetry.current_traceparent() == inner.traceparent

    (outer_span,) = telemetry_on.wait_for("outer")
    (inner_span,) = telemetry_on.wait_for("inner")
    assert inner_span.parent_span_id == outer_span.span_id
    assert headers == {"traceparent": f"00-{inner_span.trace_id}-{inner_span.span_id}-01"}
    assert outer.traceparent == f"00-{outer_span.trace_id}-{outer_span.span_id}-01"


def test_disabled_every_helper_is_a_no_op(monkeypatch):
    monkeypatch.delenv("OTEL_EXPORTER_OTLP_ENDPOINT", raising=False)
    monkeypatch.delenv("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", raising=False)
    assert not telemetry.init() and not telemetry.enabled()
    headers = {"traceparent": "kept"}

    with telemetry.span("x", attributes={"a": 1}) as span:
        span.set_attribute("b", 2)
        span.set_status_code(500)
        telemetry.inject(headers)
        telemetry.set_attribute("c", 3)

    assert span is telemetry.NOOP_SPAN and span.traceparent is None
    assert telemetry.current_traceparent() is None
    assert headers == {"traceparent": "kept"}
    assert telemetry.traced("y")(lambda: 42)() == 42


def _disabled(monkeypatch) -> None:  # noqa: ANN001
    monkeypatch.delenv("OTEL_EXPORTER_OTLP_ENDPOINT", raising=False)
    monkeypatch.delenv("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", raising=False)
    assert not telemetry.init()


def _logged_trace_id(message: str) -> str:
    """The trace id the log filter gives a line written now."""
    import logging

    from common.logging import CorrelationIdFilter

    record = logging.LogRecord("gatehouse.test", logging.INFO, __file__, 1, message, None, None)
    CorrelationIdFilter().filter(record)
    return record.trace_id


def test_disabled_work_continuing_a_traceparent_logs_and_carries_its_trace(monkeypatch):
    _disabled(monkeypatch)
    parent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"

    with telemetry.span("outbox.deliver", kind="producer", parent_traceparent=parent) as span:
        inside = _logged_trace_id("delivering")
        carried = telemetry.carried_traceparent()

    assert span.traceparent is None  # nothing is recorded: no span of ours to name
    assert inside == "4bf92f3577b34da6a3ce929d0e0e4736"
    assert carried.split("-")[1] == inside and carried.split("-")[2] != "00f067aa0ba902b7"
    assert _logged_trace_id("after") == ""  # reset on exit
    with telemetry.span("no parent") as plain:
        assert _logged_trace_id("no trace") == ""
    assert plain is telemetry.NOOP_SPAN


def test_disabled_a_task_logs_under_the_trace_of_the_work_that_enqueued_it(monkeypatch):
    from celery import Celery

    from common.tracing import reset_trace, set_trace, trace_context
    from config.celery import _attach_traceparent, _task_span_end, _task_span_start

    _disabled(monkeypatch)
    request_trace = trace_context(None)
    headers: dict = {}
    token = set_trace(request_trace)
    try:
        _attach_traceparent(headers=headers)  # before_task_publish, inside a request
    finally:
        reset_trace(token)
    assert headers["traceparent"].split("-")[1] == request_trace.trace_id

    app = Celery("probe", set_as_current=False)
    seen: list[str] = []

    @app.task(name="probe.logs")
    def logs() -> None:
        seen.append(_logged_trace_id("task line"))

    logs.push_request(id="t1", traceparent=headers["traceparent"])
    try:
        _task_span_start(task=logs)  # task_prerun in the worker
        logs.run()
        _task_span_end(task=logs, state="SUCCESS")
    finally:
        logs.pop_request()
    assert seen == [request_trace.trace_id]
    assert _logged_trace_id("after the task") == ""


_UNSET_PROBE = """
import json, sys
import django
django.setup()
import config.asgi  # the web entrance, gateway and every app
import config.celery  # the worker's signal handlers
from common import telemetry
started = telemetry.init()
with telemetry.span("gateway.request", kind="server"):
    pass
print(json.dumps({"started": started, "modules": sorted(sys.modules)}))
"""
# The span SDK, the exporter and protobuf. (redis-py imports the OpenTelemetry *API* and metrics
# SDK by itself when they are installed, for its own opt-in metrics: not ours to avoid.)
_EXPORT_MODULES = (
    "opentelemetry.sdk.trace",
    "opentelemetry.exporter",
    "opentelemetry.proto",
    "google.protobuf",
)


def test_unset_the_span_sdk_and_exporter_are_not_even_imported():
    env = {
        name: value
        for name, value in os.environ.items()
        if not name.startswith("OTEL_EXPORTER_OTLP") and name != "PYTEST_XDIST_WORKER"
    }
    env.update(DJANGO_SETTINGS_MODULE="config.settings.test", PYTHONPATH=str(ROOT))

    output = subprocess.run(
        [sys.executable, "-c", _UNSET_PROBE], env=env, cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout

    probe = json.loads(output.strip().splitlines()[-1])
    assert probe["started"] is False
    assert "common.telemetry" in probe["modules"] and "gateway.asgi" in probe["modules"]
    assert [m for m in probe["modules"] if m.startswith(_EXPORT_MODULES)] == []


def test_collector_down_spans_are_dropped_and_the_work_goes_on(monkeypatch):
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", f"http://127.0.0.1:{free_port()}")
    monkeypatch.setenv("OTEL_BSP_SCHEDULE_DELAY", "50")
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_TIMEOUT", "1")
    assert telemetry.init()
    try:
        order = _order()
        assert Order.objects.filter(pk=order.pk).exists()
    finally:
        telemetry.shutdown()  # bounded: gives up on the unreachable collector
    assert not telemetry.enabled()
