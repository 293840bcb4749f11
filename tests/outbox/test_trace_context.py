"""An outbox event carries the W3C trace context of the request that wrote it, and its delivery
sends it on (SPEC §3 "Tracing", docs/telemetry.md), with span export off."""

from __future__ import annotations

import pytest

from outbox.models import OutboxEvent
from outbox.relay import outbox_relay_drain
from tests.support.servers import Reply

pytestmark = pytest.mark.django_db(transaction=True)

TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
CALLER_SPAN = "00f067aa0ba902b7"
ORDER = {
    "store_id": "7b0c6f1e-3d2a-4c55-9a0e-2f1d6f7e8a90",
    "currency": "USD",
    "delivery_address": "1 Main St",
    "contact_phone": "+14155550100",
    "items": [{"sku": "S1", "name": "Widget", "quantity": 1, "unit_price": "3.50"}],
}


@pytest.fixture
def webhook(settings, http_server_factory):
    server = http_server_factory(lambda request: Reply(204))
    settings.OUTBOX_PUBLISHER = "webhook"
    settings.OUTBOX_WEBHOOK_URL = f"{server.url}/hooks"
    settings.OUTBOX_WEBHOOK_SECRET = "s3cret"
    yield server
    from outbox.publishers import close_cached_publisher

    close_cached_publisher()


def _create(client, token_service, **headers):  # noqa: ANN001, ANN202
    return client.post(
        "/api/orders",
        data=ORDER,
        content_type="application/json",
        HTTP_IDEMPOTENCY_KEY="k-1",
        **token_service.auth_header(sub="u1", tenant_id="t1"),
        **headers,
    )


def test_the_event_of_a_traced_request_is_delivered_in_that_trace(client, token_service, webhook):
    answer = _create(client, token_service, HTTP_TRACEPARENT=f"00-{TRACE}-{CALLER_SPAN}-01")

    assert answer.status_code == 201, answer.content
    event = OutboxEvent.objects.get(aggregateid=answer.json()["id"])  # order.created
    version, trace_id, span_id, flags = event.headers["traceparent"].split("-")
    # the request's own span (a child of the caller's), not the caller's span itself
    assert (version, trace_id, flags) == ("00", TRACE, "01")
    assert span_id != CALLER_SPAN and len(span_id) == 16
    written = OutboxEvent.objects.count()  # with the saga's start, if any
    assert {e.headers["traceparent"] for e in OutboxEvent.objects.all()} == {event.headers["traceparent"]}
    assert outbox_relay_drain().published == written
    sent = {request.header("X-Event-Id"): request.header("traceparent") for request in webhook.requests}
    assert sent[str(event.id)] == event.headers["traceparent"]
    assert set(sent.values()) == {event.headers["traceparent"]}


def test_a_request_without_traceparent_starts_the_trace_its_event_carries(client, token_service, webhook):
    answer = _create(client, token_service)

    event = OutboxEvent.objects.get(aggregateid=answer.json()["id"])
    _, trace_id, _, _ = event.headers["traceparent"].split("-")
    assert len(trace_id) == 32 and trace_id != TRACE
    outbox_relay_drain()
    assert webhook.requests[0].header("traceparent") == event.headers["traceparent"]
