"""The webhook publisher against a real HTTP receiver: signature, failures, poison events."""

from __future__ import annotations

import hashlib
import hmac
import json

import pytest
from django.core.management import CommandError, call_command
from django.db import transaction
from django.utils import timezone

from outbox.models import OutboxEvent
from outbox.relay import outbox_backoff_delay, outbox_relay_drain
from outbox.services import outbox_publish
from tests.outbox.factories import publish_events
from tests.support.servers import Reply

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def webhook(settings, http_server_factory):
    """A receiver that fails (500) for aggregates listed in `poisoned`."""
    poisoned: set[str] = set()

    def handle(request):  # type: ignore[no-untyped-def]
        if json.loads(request.body)["aggregateid"] in poisoned:
            return Reply(500, b"upstream exploded")
        return Reply(204)

    server = http_server_factory(handle)
    server.poisoned = poisoned
    settings.OUTBOX_PUBLISHER = "webhook"
    settings.OUTBOX_WEBHOOK_URL = f"{server.url}/hooks/events"
    settings.OUTBOX_WEBHOOK_SECRET = "s3cret"
    yield server
    from outbox.publishers import close_cached_publisher

    close_cached_publisher()


def delivered(server) -> list[dict]:  # type: ignore[no-untyped-def]
    return [json.loads(request.body) for request in server.requests]


def make_due() -> None:
    """The backoff has elapsed (time moved on without sleeping)."""
    OutboxEvent.objects.filter(status="pending").update(available_at=timezone.now())


def test_receiver_can_verify_the_signature_of_the_exact_body(webhook):
    with transaction.atomic():
        event = outbox_publish(
            aggregatetype="order", aggregateid="42", type="order.paid", payload={"amount": "9.99"}
        )

    assert outbox_relay_drain().published == 1

    [request] = webhook.requests
    assert request.method == "POST" and request.path == "/hooks/events"
    expected = hmac.new(b"s3cret", request.body, hashlib.sha256).hexdigest()
    assert request.header("X-Signature") == f"sha256={expected}"
    assert request.header("Content-Type") == "application/json"
    assert json.loads(request.body) == {
        "id": str(event.id),
        "type": "order.paid",
        "aggregatetype": "order",
        "aggregateid": "42",
        "payload": {"amount": "9.99"},
        "created_at": event.created_at.isoformat(),
    }
    forged = hmac.new(b"other-secret", request.body, hashlib.sha256).hexdigest()
    assert request.header("X-Signature") != f"sha256={forged}"


def test_poison_event_dies_after_max_attempts_others_flow_later_events_held_replay_resends(webhook, settings):
    # given a receiver that fails for aggregate a0 only
    settings.OUTBOX_MAX_ATTEMPTS = 3
    webhook.poisoned.add("a0")
    expected = publish_events(count=12, aggregates=4, shuffle=False)  # a0..a3, 3 events each

    # when the relay runs three times, the backoff elapsing in between
    for _ in range(3):
        outbox_relay_drain()
        make_due()

    # then a0's first event is dead after 3 attempts, and only it was ever tried for a0
    first, *held = OutboxEvent.objects.filter(aggregateid="a0").order_by("sequence")
    assert first.status == "dead" and first.attempts == 3
    assert "HTTP 500" in first.last_error
    assert [event.status for event in held] == ["pending", "pending"]
    assert [event.attempts for event in held] == [0, 0]
    tried_a0 = [body for body in delivered(webhook) if body["aggregateid"] == "a0"]
    assert [body["id"] for body in tried_a0] == [str(first.id)] * 3
    # the other aggregates all flowed
    flowed = [body for body in delivered(webhook) if body["aggregateid"] != "a0"]
    assert len(flowed) == 9

    # when more events arrive for the dead aggregate, they are held too; others still flow
    with transaction.atomic():
        outbox_publish(aggregatetype="order", aggregateid="a0", type="t", payload={"n": 3})
        outbox_publish(aggregatetype="order", aggregateid="a1", type="t", payload={"n": 3})
    assert outbox_relay_drain().published == 1
    assert OutboxEvent.objects.filter(aggregateid="a0", status="pending").count() == 3

    # when the receiver is fixed and the dead event is replayed
    webhook.poisoned.clear()
    call_command("outbox_replay", "--dead")
    outbox_relay_drain()

    # then a0's four events arrive, in order, after the three failed tries
    a0_bodies = [body for body in delivered(webhook) if body["aggregateid"] == "a0"][3:]
    assert [body["payload"]["n"] for body in a0_bodies] == [0, 1, 2, 3]
    assert OutboxEvent.objects.exclude(status="published").count() == 0
    assert expected["a0"] == 3


def test_backoff_grows_with_attempts(webhook):
    # given a receiver that always fails
    webhook.poisoned.add("a0")
    publish_events(count=1, aggregates=1)
    waits = []

    # when the relay retries
    for _ in range(4):
        before = timezone.now()
        outbox_relay_drain()
        event = OutboxEvent.objects.get()
        waits.append((event.available_at - before).total_seconds())
        make_due()

    # then each wait is longer than the one before (2 s base, doubling, jitter within [d/2, d])
    assert waits == sorted(waits)
    assert 1.0 <= waits[0] <= 2.5 and 8.0 <= waits[3] <= 16.5
    assert all(
        2 ** (attempt - 1) <= outbox_backoff_delay(attempts=attempt) <= 2**attempt for attempt in range(1, 12)
    )


def test_drain_command_reports_progress_and_fails_when_publishing_fails(webhook, capsys):
    publish_events(count=4, aggregates=2, shuffle=False)
    webhook.poisoned.add("a1")

    with pytest.raises(CommandError, match="1 publish attempts failed"):
        call_command("drain_outbox", "--batch-size", "10")

    output = capsys.readouterr().out
    assert "batch 1: claimed 4, published 2, failed 1" in output
    assert OutboxEvent.objects.filter(status="published").count() == 2

    webhook.poisoned.clear()
    make_due()
    call_command("drain_outbox")
    assert OutboxEvent.objects.filter(status="published").count() == 4


def test_a_slow_receiver_never_outlives_the_lease(settings, http_server_factory):
    # given a receiver that takes 0.6 s per event and a 1 s lease
    from outbox.relay import outbox_relay_batch

    server = http_server_factory(lambda request: Reply(204, delay=0.6))
    settings.OUTBOX_PUBLISHER = "webhook"
    settings.OUTBOX_WEBHOOK_URL = server.url
    settings.OUTBOX_LEASE_SECONDS = 1
    publish_events(count=3, aggregates=1)

    # when one round runs
    result = outbox_relay_batch(batch_size=10)

    # then it stops starting waves at half the lease and hands the rest back, unleased
    assert (result.claimed, result.published, result.released) == (3, 1, 2)
    rest = OutboxEvent.objects.filter(status="pending")
    assert [(event.attempts, event.locked_until) for event in rest] == [(0, None), (0, None)]
    from outbox.publishers import close_cached_publisher

    close_cached_publisher()
