"""The payment event body is parsed strictly by one serializer, for the webhook and the consumer."""

from __future__ import annotations

import json

import pytest

from orders.models import Order, OrderStatus, ProcessedEvent
from orders.payments import PaymentEventParseError, payment_event_parse
from outbox.models import OutboxEvent
from tests.orders.conftest import payment_body
from tests.orders.factories import OrderFactory

pytestmark = pytest.mark.django_db


def _fields(order, **overrides):
    return json.loads(payment_body(order, **overrides))


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("amount", 20),  # a JSON integer
        ("amount", 20.0),  # a JSON float
        ("amount", " 20.00 "),  # padded
        ("amount", "2e1"),
        ("amount", "-20.00"),
        ("order_id", 5),  # DRF's UUIDField would make UUID(int=5) of it
        ("event_id", 7),
        ("event_id", ""),
        ("event_id", "x" * 256),
        ("event_id", "evt\u0000"),
        ("event_id", "evt\ud800"),  # a lone surrogate
        ("provider_reference", ""),
        ("provider_reference", "psp\udfff"),
        ("type", True),
        ("type", "payment.refunded"),
        ("currency", "usd"),
        ("currency", 840),
    ],
)
def test_a_payment_event_with_a_loose_field_is_400_and_changes_nothing(post_payment_event, field, value):
    order = OrderFactory()
    fields = _fields(order)
    fields[field] = value
    # json.dumps escapes NUL and lone surrogates as \u0000 / \ud800, as a hostile client would
    body = json.dumps(fields).encode()

    response = post_payment_event(body)

    assert response.status_code == 400, response.content
    assert response["Content-Type"].startswith("application/problem+json")
    assert field in response.json()["errors"]
    assert Order.objects.get(pk=order.pk).status == OrderStatus.PENDING_PAYMENT
    assert not ProcessedEvent.objects.exists()
    assert not OutboxEvent.objects.filter(type="order.paid").exists()


def test_10000_deep_json_is_400_problem_and_changes_nothing(post_payment_event):
    order = OrderFactory()
    body = b'{"event_id": ' + b"[" * 10_000 + b"]" * 10_000 + b"}"

    response = post_payment_event(body)

    assert response.status_code == 400
    assert response["Content-Type"].startswith("application/problem+json")
    assert Order.objects.get(pk=order.pk).status == OrderStatus.PENDING_PAYMENT
    assert not ProcessedEvent.objects.exists()


def test_the_consumer_and_the_webhook_share_the_parser():
    order = OrderFactory()
    event = payment_event_parse(body=payment_body(order, event_id="evt-p"))
    assert (event.order_id, str(event.amount), event.currency) == (order.id, "20.00", "USD")

    with pytest.raises(PaymentEventParseError) as raised:
        payment_event_parse(body=json.dumps({**_fields(order), "amount": 20}))
    assert "amount" in raised.value.errors


def test_the_schema_documents_the_payment_event_body(client):
    schema = client.get("/api/schema", HTTP_ACCEPT="application/json").json()
    operation = schema["paths"]["/api/payments/events"]["post"]
    ref = operation["requestBody"]["content"]["application/json"]["schema"]["$ref"]
    component = schema["components"]["schemas"][ref.rsplit("/", 1)[1]]
    assert set(component["required"]) == {
        "event_id",
        "type",
        "order_id",
        "amount",
        "currency",
        "provider_reference",
    }
    assert component["properties"]["amount"]["type"] == "string"
