"""The relay to the real RabbitMQ: confirmed delivery, per-aggregate order, outages."""

from __future__ import annotations

import json
import threading
import time
import uuid

import pytest
from django.db import connection, transaction
from django.utils import timezone

from outbox.models import OutboxEvent
from outbox.publishers import BrokerPublisher
from outbox.relay import outbox_relay_batch, outbox_relay_drain
from outbox.services import outbox_publish
from tests.outbox.conftest import RABBIT_URL, assert_order_per_aggregate
from tests.outbox.factories import publish_events
from tests.support.servers import free_port

pytestmark = pytest.mark.django_db(transaction=True)


def test_relay_publishes_confirmed_persistent_messages_carrying_the_event_id(broker):
    # given
    with transaction.atomic():
        event = outbox_publish(
            aggregatetype="order",
            aggregateid="42",
            type="order.created",
            payload={"total": "12.50", "items": [1, 2]},
            headers={"correlation_id": "corr-1"},
        )

    # when
    result = outbox_relay_drain()

    # then
    assert result.published == 1
    [message] = broker.collect(at_least=1)
    assert message.message_id == str(event.id)
    assert message.routing_key == "order.created"
    assert message.delivery_mode == 2
    assert message.headers["correlation_id"] == "corr-1"
    assert message.body == {
        "id": str(event.id),
        "type": "order.created",
        "aggregatetype": "order",
        "aggregateid": "42",
        "payload": {"total": "12.50", "items": [1, 2]},
        "created_at": event.created_at.isoformat(),
    }
    stored = OutboxEvent.objects.get(id=event.id)
    assert stored.status == OutboxEvent.Status.PUBLISHED
    assert stored.published_at is not None
    assert stored.locked_until is None


def test_two_relays_deliver_everything_in_order_per_aggregate(broker):
    # given 10 000 events over 100 aggregates, interleaved
    expected = publish_events(count=10_000, aggregates=100)
    published_by: dict[str, int] = {}
    errors: list[BaseException] = []

    def relay(name: str) -> None:
        publisher = BrokerPublisher(RABBIT_URL, broker.exchange)
        published = 0
        try:
            deadline = time.monotonic() + 120  # generous: the machine is shared
            while time.monotonic() < deadline:
                if name == "one":  # batch by batch
                    result = outbox_relay_batch(publisher=publisher, batch_size=250)
                    published, claimed = published + result.published, result.claimed
                else:  # draining, the next claim overlapping the broker's confirms
                    drained = outbox_relay_drain(publisher=publisher, batch_size=250)
                    published, claimed = published + drained.published, drained.batches
                if not claimed:
                    if not OutboxEvent.objects.filter(status="pending").exists():
                        break
                    time.sleep(0.005)  # the rest is leased by the other relay
        except BaseException as exc:  # surfaced below
            errors.append(exc)
        finally:
            published_by[name] = published
            publisher.close()
            connection.close()

    # when two relays run at once, each with its own database connection and broker channel
    threads = [threading.Thread(target=relay, args=(name,)) for name in ("one", "two")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=150)

    # then
    assert not errors
    assert published_by["one"] > 0 and published_by["two"] > 0
    broker.collect(at_least=10_000, timeout=30)
    unique = broker.unique_in_order()
    assert len(unique) == 10_000
    assert_order_per_aggregate(unique, expected)
    assert OutboxEvent.objects.exclude(status="published").count() == 0


def test_broker_down_keeps_business_writes_and_the_backlog_drains_when_it_is_back(broker, settings):
    # given the broker is unreachable
    settings.OUTBOX_BROKER_URL = f"amqp://guest:guest@127.0.0.1:{free_port()}//"
    with transaction.atomic():
        for n in range(3):
            outbox_publish(aggregatetype="order", aggregateid="a0", type="order.updated", payload={"n": n})

    # when the relay runs during the outage
    outage = outbox_relay_drain()

    # then the events stay, backing off, with the reason recorded
    assert outage.published == 0 and outage.failed == 1
    head, *rest = OutboxEvent.objects.filter(aggregateid="a0")
    assert head.status == "pending" and head.attempts == 1
    assert "broker" in head.last_error
    assert head.available_at > timezone.now()
    assert all(event.attempts == 0 and event.locked_until is None for event in rest)

    # when the broker is back and the backoff has passed
    settings.OUTBOX_BROKER_URL = RABBIT_URL
    OutboxEvent.objects.update(available_at=timezone.now())
    recovered = outbox_relay_drain()

    # then the whole backlog arrives in order
    assert recovered.published == 3
    assert_order_per_aggregate(broker.collect(at_least=3), {"a0": 3})


def test_a_leased_head_holds_back_its_aggregate_but_not_the_others(broker):
    # given aggregate a0's head is leased by another (live) relay
    expected = publish_events(count=6, aggregates=2, shuffle=False)
    head = OutboxEvent.objects.filter(aggregateid="a0").order_by("sequence").first()
    OutboxEvent.objects.filter(id=head.id).update(locked_until=timezone.now() + timezone.timedelta(minutes=1))

    # when
    result = outbox_relay_drain()

    # then only a1 flowed
    assert result.published == 3
    assert {m.body["aggregateid"] for m in broker.collect(at_least=3)} == {"a1"}
    assert OutboxEvent.objects.filter(aggregateid="a0", status="pending").count() == 3

    # when the lease lapses (its holder died), a0 flows, in order
    OutboxEvent.objects.filter(id=head.id).update(locked_until=timezone.now())
    outbox_relay_drain()
    broker.collect(at_least=6)
    assert_order_per_aggregate(broker.unique_in_order(), expected)


def test_unknown_publisher_setting_is_reported(settings):
    from outbox.publishers import publisher_from_settings

    settings.OUTBOX_PUBLISHER = "carrier-pigeon-" + uuid.uuid4().hex[:4]
    with pytest.raises(ValueError, match="unknown OUTBOX_PUBLISHER"):
        publisher_from_settings()


def test_broker_publisher_works_over_redis_too(settings):
    import kombu

    # given a kombu queue bound to the exchange on Redis (the test's flushed Redis database)
    settings.OUTBOX_PUBLISHER = "broker"
    settings.OUTBOX_BROKER_URL = settings.REDIS_URL
    settings.OUTBOX_EXCHANGE = f"test-outbox-{uuid.uuid4().hex[:8]}"
    exchange = kombu.Exchange(settings.OUTBOX_EXCHANGE, type="topic", durable=True)
    with kombu.Connection(settings.REDIS_URL) as consumer_connection:
        queue = kombu.Queue("test-outbox-redis", exchange, routing_key="order.#")
        queue(consumer_connection.default_channel).declare()
        with transaction.atomic():
            event = outbox_publish(
                aggregatetype="order", aggregateid="1", type="order.created", payload={"a": 1}
            )

        # when
        try:
            assert outbox_relay_drain().published == 1
        finally:
            from outbox.publishers import close_cached_publisher

            close_cached_publisher()

        # then
        message = queue(consumer_connection.default_channel).get(no_ack=True)
        assert message is not None
        assert message.properties["message_id"] == str(event.id)
        assert json.loads(message.body)["payload"] == {"a": 1}


def test_a_broker_connection_dropped_while_idle_costs_no_attempt(broker):
    import socket

    from outbox.publishers import publisher_from_settings

    publish_events(count=1, aggregates=1, aggregatetype="first")
    assert outbox_relay_drain().published == 1
    # the kept-open connection dies while the relay is idle (broker restart, NAT timeout)
    publisher_from_settings()._connection.connection.transport.sock.shutdown(socket.SHUT_RDWR)

    publish_events(count=3, aggregates=1)
    result = outbox_relay_drain()

    assert (result.published, result.failed) == (3, 0)
    assert len({m.message_id for m in broker.collect(at_least=4)}) == 4
    assert OutboxEvent.objects.filter(attempts__gt=0).count() == 0


def test_marking_after_the_rows_moved_still_marks_every_confirmed_event():
    from outbox.relay import outbox_claim, outbox_mark_published

    # given a claimed batch whose rows were updated since (a second relay re-leased them after
    # this one's lease lapsed), so the row versions the claim saw are gone
    publish_events(count=6, aggregates=3)
    claimed = outbox_claim(batch_size=10)
    assert len(claimed) == 6 and all(event.ctid for event in claimed)
    moved = claimed[:4]
    OutboxEvent.objects.filter(id__in=[event.id for event in moved]).update(locked_until=timezone.now())

    # when the first relay marks what its broker confirmed
    marked = outbox_mark_published(
        ids=[event.id for event in claimed], ctids=[event.ctid for event in claimed]
    )

    # then all six are published, whichever way each row was found
    assert marked == 6
    assert OutboxEvent.objects.filter(status="published").count() == 6
