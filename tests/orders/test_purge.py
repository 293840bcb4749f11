"""Processed payment-event ids are kept for PROCESSED_EVENTS_RETENTION_DAYS, then purged."""

from __future__ import annotations

from datetime import timedelta
from io import StringIO

import pytest
from django.core.management import call_command
from django.utils import timezone

from orders import tasks
from orders.models import ProcessedEvent
from tests.orders.factories import ProcessedEventFactory

pytestmark = pytest.mark.django_db


def test_purge_deletes_only_rows_past_retention(settings):
    settings.PROCESSED_EVENTS_RETENTION_DAYS = 30
    now = timezone.now()
    old = [ProcessedEventFactory(processed_at=now - timedelta(days=31)) for _ in range(3)]
    recent = ProcessedEventFactory(processed_at=now - timedelta(days=29))

    assert tasks.processed_events_purge.apply().get() == 3

    assert list(ProcessedEvent.objects.values_list("pk", flat=True)) == [recent.pk]
    assert not ProcessedEvent.objects.filter(pk__in=[o.pk for o in old]).exists()


def test_purge_command_reports_the_count():
    ProcessedEventFactory(processed_at=timezone.now() - timedelta(days=3))
    out = StringIO()

    call_command("purge_processed_events", "--days", "2", stdout=out)

    assert "Deleted 1 processed event(s)" in out.getvalue()
    assert ProcessedEvent.objects.count() == 0
