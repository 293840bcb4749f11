"""`manage.py consume_payment_events` against the real RabbitMQ: same effects as the HTTP intake."""

from __future__ import annotations

import json
import uuid
from io import StringIO

import pytest
from django.core.management import CommandError, call_command
from kombu import Connection

from orders.consumer import payment_events_queues
from orders.models import OrderStatus, ProcessedEvent
from outbox.models import OutboxEvent
from tests.orders.conftest import payment_body
from tests.orders.factories import OrderFactory
from tests.support.servers import free_port

pytestmark = pytest.mark.django_db(transaction=True)

RABBITMQ_URL = "amqp://guest:guest@127.0.0.1:5672//"


@pytest.fixture
def broker(settings):
    """A unique queue (and its .dead twin) on the real RabbitMQ; deleted afterwards."""
    name = f"test-payment-events-{uuid.uuid4().hex[:12]}"
    settings.PAYMENT_EVENTS_BROKER_URL = RABBITMQ_URL
    settings.PAYMENT_EVENTS_QUEUE = name
    with Connection(RABBITMQ_URL, connect_timeout=5) as connection:
        channel = connection.channel()
        queues = [queue(channel) for queue in payment_events_queues(name)]
        for queue in queues:
            queue.declare()

        class Broker:
            queue_name = name

            def publish(self, body: bytes | str) -> None:
                connection.Producer(channel).publish(
                    body, routing_key=name, exchange="", content_type="application/json", retry=True
                )

            def dead_letters(self) -> list[tuple[dict, str]]:
                found = []
                while (message := queues[1].get(no_ack=True)) is not None:
                    found.append((message.headers, message.body))
                return found

            def depth(self) -> int:
                return queues[0].queue_declare(passive=True).message_count

        yield Broker()
        for queue in queues:
            queue.delete()


def consume(*args: str) -> str:
    out = StringIO()
    call_command("consume_payment_events", "--timeout", "3", *args, stdout=out)
    return out.getvalue()


def test_consumer_applies_events_exactly_once_and_dead_letters_bad_ones(broker):
    # given
    paid_order, failed_order = OrderFactory(), OrderFactory()
    broker.publish(payment_body(paid_order, event_id="b-1"))
    broker.publish(payment_body(paid_order, event_id="b-1"))  # redelivered twin
    broker.publish(payment_body(failed_order, event_id="b-2", type="payment.failed"))
    broker.publish(b"{not json")
    broker.publish(payment_body(paid_order, event_id="b-3", order_id=str(uuid.uuid4())))  # unknown order
    broker.publish(payment_body(failed_order, event_id="b-4", amount="1.00"))  # mismatch

    # when
    output = consume("--max-messages", "6")

    # then: the same effects as the HTTP intake
    assert "Consumed 6 message(s)" in output
    assert "dead_lettered=3" in output
    assert "duplicate=1" in output
    paid_order.refresh_from_db()
    failed_order.refresh_from_db()
    assert paid_order.status == OrderStatus.PAID
    assert failed_order.status == OrderStatus.CANCELLED
    assert OutboxEvent.objects.filter(aggregateid=str(paid_order.id), type="order.paid").count() == 1
    assert OutboxEvent.objects.filter(aggregateid=str(failed_order.id), type="order.cancelled").count() == 1
    assert sorted(ProcessedEvent.objects.values_list("event_id", flat=True)) == ["b-1", "b-2"]
    # nothing left to redeliver; the refused ones are parked with their reason
    assert broker.depth() == 0
    reasons = sorted(headers["x-rejection-reason"].split(":")[0] for headers, _ in broker.dead_letters())
    assert reasons == ["order-not-found", "payment-amount-mismatch", "validation-error"]


def test_event_seen_over_http_first_is_a_duplicate_on_the_broker(broker, client):
    from tests.orders.conftest import sign

    order = OrderFactory()
    body = payment_body(order, event_id="both-ways")
    assert (
        client.post(
            "/api/payments/events", data=body, content_type="application/json", HTTP_X_SIGNATURE=sign(body)
        ).json()["outcome"]
        == "paid"
    )
    broker.publish(body)

    output = consume("--max-messages", "1")

    assert "duplicate=1" in output
    assert OutboxEvent.objects.filter(type="order.paid").count() == 1


def test_consumer_stops_after_idle_timeout(broker):
    output = consume("--timeout", "1")

    assert "Consumed 0 message(s)" in output


def test_database_down_requeues_the_message_and_fails(broker, settings):
    order = OrderFactory()
    broker.publish(json.dumps(json.loads(payment_body(order, event_id="db-down"))))
    from django.db import connection

    connection.close()
    original_port = connection.settings_dict["PORT"]
    connection.settings_dict["PORT"] = str(free_port())
    try:
        with pytest.raises(CommandError, match="requeued"):
            consume("--max-messages", "1")
    finally:
        connection.close()
        connection.settings_dict["PORT"] = original_port

    assert broker.depth() == 1  # still there for the restarted consumer
    output = consume("--max-messages", "1")
    assert "paid=1" in output


def test_unreachable_broker_is_a_clear_failure(settings):
    settings.PAYMENT_EVENTS_BROKER_URL = f"amqp://guest:guest@127.0.0.1:{free_port()}//"

    with pytest.raises(CommandError, match="Broker unavailable"):
        call_command("consume_payment_events", "--timeout", "1", stdout=StringIO())
