"""Operating the outbox: replay and purge commands, admin retry, metrics, the Celery tasks."""

from __future__ import annotations

import re
import uuid
from datetime import timedelta

import pytest
from django.core.management import CommandError, call_command
from django.utils import timezone

from outbox.models import OutboxEvent
from outbox.tasks import outbox_purge_published, outbox_relay
from tests.outbox.factories import OutboxEventFactory

pytestmark = pytest.mark.django_db


def metric(text: str, name: str) -> float:
    match = re.search(rf"^{name} (\S+)$", text, re.MULTILINE)
    assert match, f"{name} missing from /metrics"
    return float(match.group(1))


def test_replay_by_id_and_by_aggregate_resets_to_pending(capsys):
    dead = OutboxEventFactory(status="dead", attempts=5, last_error="HTTP 500")
    published = OutboxEventFactory(aggregateid="o-7", status="published", published_at=timezone.now())
    untouched = OutboxEventFactory(status="dead", attempts=5)

    call_command("outbox_replay", "--id", str(dead.id))
    call_command("outbox_replay", "--aggregate", "order:o-7")

    dead.refresh_from_db()
    published.refresh_from_db()
    untouched.refresh_from_db()
    assert (dead.status, dead.attempts, dead.locked_until) == ("pending", 0, None)
    assert dead.available_at <= timezone.now()
    assert (published.status, published.published_at) == ("pending", None)
    assert untouched.status == "dead"
    assert "1 events reset to pending" in capsys.readouterr().out


def test_replay_refuses_unclear_selections():
    with pytest.raises(CommandError, match="choose events"):
        call_command("outbox_replay")
    with pytest.raises(CommandError, match="TYPE:ID"):
        call_command("outbox_replay", "--aggregate", "order")
    with pytest.raises(CommandError, match="--id"):
        call_command("outbox_replay", "--id", "not-a-uuid")


def test_purge_deletes_only_published_events_past_retention(settings, capsys):
    settings.OUTBOX_RETENTION_DAYS = 7
    old = timezone.now() - timedelta(days=8)
    expired = OutboxEventFactory.create_batch(3, status="published", published_at=old)
    recent = OutboxEventFactory(status="published", published_at=timezone.now())
    old_pending = OutboxEventFactory(created_at=old)
    old_dead = OutboxEventFactory(status="dead", created_at=old)

    call_command("purge_outbox")
    assert "3 published events deleted" in capsys.readouterr().out

    remaining = set(OutboxEvent.objects.values_list("id", flat=True))
    assert remaining == {recent.id, old_pending.id, old_dead.id}
    assert not remaining & {event.id for event in expired}
    assert outbox_purge_published() == 0  # the beat task: nothing left to do


def test_metrics_show_backlog_dead_lag_and_published_total(client, settings):
    settings.OUTBOX_PUBLISHER = "log"
    OutboxEventFactory(created_at=timezone.now() - timedelta(seconds=90))
    OutboxEventFactory()
    OutboxEventFactory(status="dead")
    before = metric(client.get("/metrics").content.decode(), "outbox_events_published_total")

    text = client.get("/metrics").content.decode()
    assert metric(text, "outbox_events_pending") == 2
    assert metric(text, "outbox_events_dead") == 1
    assert 89 <= metric(text, "outbox_lag_seconds") < 300

    assert outbox_relay.apply().get() == 2  # the beat task, run in-process

    text = client.get("/metrics").content.decode()
    assert metric(text, "outbox_events_pending") == 0
    assert metric(text, "outbox_lag_seconds") == 0
    assert metric(text, "outbox_events_published_total") == before + 2


def test_admin_lists_filters_and_retries_dead_events(admin_client):
    dead = OutboxEventFactory(status="dead", attempts=5, aggregateid="dead-one")
    pending = OutboxEventFactory(aggregateid="pending-one")

    listing = admin_client.get("/admin/outbox/outboxevent/", {"status__exact": "dead"})
    assert listing.status_code == 200
    assert "dead-one" in listing.content.decode()
    assert "pending-one" not in listing.content.decode()
    found = admin_client.get("/admin/outbox/outboxevent/", {"q": dead.aggregateid})
    assert dead.aggregateid in found.content.decode()
    detail = admin_client.get(f"/admin/outbox/outboxevent/{dead.id}/change/")
    assert detail.status_code == 200
    assert 'name="payload"' not in detail.content.decode()  # read-only

    response = admin_client.post(
        "/admin/outbox/outboxevent/",
        {"action": "retry_events", "_selected_action": [str(dead.id), str(pending.id)]},
        follow=True,
    )

    assert "1 dead events queued for retry" in response.content.decode()
    dead.refresh_from_db()
    assert (dead.status, dead.attempts) == ("pending", 0)


def test_outbox_events_cannot_be_added_by_hand(admin_client):
    assert admin_client.get("/admin/outbox/outboxevent/add/").status_code == 403
    assert uuid.UUID(str(OutboxEventFactory().id))
