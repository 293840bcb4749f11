"""OpenTelemetry spans from the real server process to a real OTLP/HTTP collector (docs/telemetry.md)."""

from __future__ import annotations

import pytest
import requests
from django.utils import timezone

from tests.gateway.proxy_support import proxy_route
from tests.support.otlp import running_collector
from tests.support.servers import Reply, free_port

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def otlp_collector():
    with running_collector() as collector:
        yield collector


PARENT_TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT_SPAN = "00f067aa0ba902b7"


def _ok(request):  # noqa: ANN001
    return Reply(200, b"ok")


def _env(endpoint: str) -> dict[str, str]:
    return {"OTEL_EXPORTER_OTLP_ENDPOINT": endpoint, "OTEL_BSP_SCHEDULE_DELAY": "50"}


def test_gateway_hop_and_upstream_call_are_spans_of_the_callers_trace(
    http_server_factory,
    gateway_process_factory,
    otlp_collector,
):
    upstream = http_server_factory(_ok)
    proxy_route(upstream.url, path="/traced/**")
    gateway = gateway_process_factory(_env(otlp_collector.url))

    answer = requests.get(
        f"{gateway}/gw/traced/a", headers={"traceparent": f"00-{PARENT_TRACE}-{PARENT_SPAN}-01"}, timeout=10
    )

    assert answer.status_code == 200
    (server,) = otlp_collector.wait_for("gateway.request")
    (client,) = otlp_collector.wait_for("gateway.upstream")
    assert (server.kind, server.trace_id, server.parent_span_id) == ("server", PARENT_TRACE, PARENT_SPAN)
    assert server.attributes["http.route"] == "/traced/**"
    assert server.attributes["http.response.status_code"] == 200
    assert server.attributes["http.request.method"] == "GET"
    assert (client.kind, client.trace_id, client.parent_span_id) == ("client", PARENT_TRACE, server.span_id)
    assert client.attributes["http.response.status_code"] == 200
    assert server.service_name == "gatehouse" and not server.error and not client.error
    # The upstream's parent is the upstream-call span; one traceparent only.
    (sent,) = upstream.requests[0].header_all("traceparent")
    assert sent == f"00-{PARENT_TRACE}-{client.span_id}-01"


def test_a_trace_started_by_the_gateway_is_the_one_exported(
    http_server_factory,
    gateway_process_factory,
    otlp_collector,
):
    upstream = http_server_factory(lambda request: Reply(503, b"down"))
    proxy_route(upstream.url, path="/fresh/**", retry_count=0)
    gateway = gateway_process_factory(_env(otlp_collector.url))

    assert requests.get(f"{gateway}/gw/fresh/a", timeout=10).status_code == 503

    (server,) = otlp_collector.wait_for("gateway.request")
    (client,) = otlp_collector.wait_for("gateway.upstream")
    _, trace_id, parent_id, _ = upstream.requests[0].header("traceparent").split("-")
    assert server.parent_span_id == "" and server.trace_id == trace_id == client.trace_id
    assert parent_id == client.span_id and client.parent_span_id == server.span_id
    assert client.error  # a client span with a 5xx answer
    assert server.error  # and the gateway answered 503


def test_an_order_created_through_the_api_is_exported_as_its_span(
    gateway_process_factory,
    otlp_collector,
    token_service,
):
    gateway = gateway_process_factory({**token_service.env, **_env(otlp_collector.url)})
    body = {
        "store_id": "7b0c6f1e-3d2a-4c55-9a0e-2f1d6f7e8a90",
        "currency": "USD",
        "delivery_address": "1 Main St",
        "contact_phone": "+14155550100",
        "items": [{"sku": "S1", "name": "Widget", "quantity": 1, "unit_price": "3.50"}],
    }

    answer = requests.post(
        f"{gateway}/api/orders",
        json=body,
        headers={"Authorization": token_service.bearer(sub="u1", tenant_id="t1"), "Idempotency-Key": "k1"},
        timeout=10,
    )

    assert answer.status_code == 201, answer.text
    (span,) = otlp_collector.wait_for("order.create")
    assert span.attributes["order.id"] == answer.json()["id"]
    assert span.kind == "internal" and not span.error


def test_a_django_request_is_a_server_span_of_the_callers_trace_and_its_event_carries_it(
    gateway_process_factory,
    otlp_collector,
    token_service,
):
    from outbox.models import OutboxEvent

    gateway = gateway_process_factory({**token_service.env, **_env(otlp_collector.url)})
    body = {
        "store_id": "7b0c6f1e-3d2a-4c55-9a0e-2f1d6f7e8a90",
        "currency": "USD",
        "delivery_address": "1 Main St",
        "contact_phone": "+14155550100",
        "items": [{"sku": "S1", "name": "Widget", "quantity": 1, "unit_price": "3.50"}],
    }

    answer_started = timezone.now()
    answer = requests.post(
        f"{gateway}/api/orders",
        json=body,
        headers={
            "Authorization": token_service.bearer(sub="u1", tenant_id="t1"),
            "Idempotency-Key": "k-traced",
            "traceparent": f"00-{PARENT_TRACE}-{PARENT_SPAN}-01",
        },
        timeout=10,
    )
    missing = requests.get(f"{gateway}/api/nothing-here", timeout=10)

    assert answer.status_code == 201, answer.text
    assert missing.status_code == 404
    (order,) = otlp_collector.wait_for("order.create")
    by_route: dict = {}
    for count in range(2, 50):  # /healthz, polled at start-up, is a Django request too
        spans = otlp_collector.wait_for("django.request", count=count)
        by_route = {span.attributes["http.route"]: span for span in spans}
        if {"/api/orders", "unmatched"} <= set(by_route):
            break
    server, unmatched = by_route["/api/orders"], by_route["unmatched"]
    assert (server.kind, server.trace_id, server.parent_span_id) == ("server", PARENT_TRACE, PARENT_SPAN)
    assert server.attributes["http.request.method"] == "POST"
    assert server.attributes["http.route"] == "/api/orders"
    assert server.attributes["http.response.status_code"] == 201 and not server.error
    assert (order.trace_id, order.parent_span_id) == (PARENT_TRACE, server.span_id)
    assert unmatched.attributes["http.route"] == "unmatched"
    assert unmatched.trace_id != PARENT_TRACE and unmatched.parent_span_id == ""
    # The events written by the order name the span that wrote them: their delivery continues there.
    events = OutboxEvent.objects.filter(created_at__gte=answer_started)
    assert events and {e.headers["traceparent"] for e in events} == {f"00-{PARENT_TRACE}-{order.span_id}-01"}


def test_an_empty_endpoint_is_unset_and_tracing_still_works(http_server_factory, gateway_process_factory):
    upstream = http_server_factory(_ok)
    proxy_route(upstream.url, path="/quiet/**")
    gateway = gateway_process_factory({"OTEL_EXPORTER_OTLP_ENDPOINT": ""})

    sent = requests.get(
        f"{gateway}/gw/quiet/a", headers={"traceparent": f"00-{PARENT_TRACE}-{PARENT_SPAN}-01"}, timeout=10
    )

    assert sent.status_code == 200
    _, trace_id, parent_id, flags = upstream.requests[0].header("traceparent").split("-")
    assert (trace_id, flags) == (PARENT_TRACE, "01") and parent_id not in (PARENT_SPAN, "0" * 16)


def test_collector_down_requests_still_succeed(http_server_factory, gateway_process_factory):
    upstream = http_server_factory(_ok)
    proxy_route(upstream.url, path="/down/**")
    gateway = gateway_process_factory(
        {**_env(f"http://127.0.0.1:{free_port()}"), "OTEL_EXPORTER_OTLP_TIMEOUT": "1"}
    )

    answers = [requests.get(f"{gateway}/gw/down/{n}", timeout=10) for n in range(20)]

    assert [a.status_code for a in answers] == [200] * 20
    assert len(upstream.requests) == 20
