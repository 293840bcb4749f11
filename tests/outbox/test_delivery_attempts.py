"""Every delivery attempt of an outbox event is recorded (when, outcome, error, duration) and
shown inline on the event's admin page."""

from __future__ import annotations

import json

import pytest
from django.db import transaction
from django.utils import timezone

from outbox.models import OutboxDeliveryAttempt, OutboxEvent
from outbox.relay import outbox_relay_drain
from outbox.services import outbox_publish
from tests.support.servers import Reply

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def flaky_webhook(settings, http_server_factory):
    """Fails (500) the first `failures[0]` deliveries, then accepts."""
    failures = [2]

    def handle(request):  # type: ignore[no-untyped-def]
        json.loads(request.body)
        if failures[0] > 0:
            failures[0] -= 1
            return Reply(500, b"receiver exploded")
        return Reply(204)

    server = http_server_factory(handle)
    settings.OUTBOX_PUBLISHER = "webhook"
    settings.OUTBOX_WEBHOOK_URL = f"{server.url}/hooks"
    settings.OUTBOX_WEBHOOK_SECRET = "s3cret"
    yield server
    from outbox.publishers import close_cached_publisher

    close_cached_publisher()


def test_each_attempt_is_recorded_with_its_error_and_duration_and_shown_in_admin(flaky_webhook, admin_client):
    # given an event whose receiver fails twice, then accepts
    with transaction.atomic():
        event = outbox_publish(aggregatetype="order", aggregateid="7", type="order.paid", payload={})
    before = timezone.now()
    for _ in range(3):
        outbox_relay_drain()
        OutboxEvent.objects.filter(status="pending").update(available_at=timezone.now())
    # then three attempts are kept, numbered, in order: failed, failed, success
    attempts = list(OutboxDeliveryAttempt.objects.filter(event=event).order_by("attempt_number"))
    assert [(a.attempt_number, a.status) for a in attempts] == [(1, "failed"), (2, "failed"), (3, "success")]
    assert all("500" in a.error for a in attempts[:2]) and attempts[2].error == ""
    assert all(a.duration_ms >= 0 and a.created_at >= before for a in attempts)
    event.refresh_from_db()
    assert event.status == "published"
    # and the event's admin page lists them
    page = admin_client.get(f"/admin/outbox/outboxevent/{event.id}/change/").content.decode()
    assert page.count("receiver exploded") >= 2 or page.count("500") >= 2
    assert "success" in page.lower()


def test_attempts_go_with_their_event_when_it_is_purged(flaky_webhook):
    from datetime import timedelta

    from outbox.services import outbox_purge_published

    with transaction.atomic():
        event = outbox_publish(aggregatetype="order", aggregateid="8", type="order.paid", payload={})
    for _ in range(3):
        outbox_relay_drain()
        OutboxEvent.objects.filter(status="pending").update(available_at=timezone.now())
    assert OutboxDeliveryAttempt.objects.filter(event=event).count() == 3
    OutboxEvent.objects.filter(pk=event.pk).update(published_at=timezone.now() - timedelta(days=400))
    assert outbox_purge_published(older_than=timedelta(days=1)) >= 1
    assert not OutboxEvent.objects.filter(pk=event.pk).exists()
    assert not OutboxDeliveryAttempt.objects.filter(event_id=event.pk).exists()
