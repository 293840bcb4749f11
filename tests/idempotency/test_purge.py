"""Retention: records with expires_at < now are deleted in batches, nothing else."""

from __future__ import annotations

from datetime import timedelta
from io import StringIO

import pytest
from django.core.management import call_command
from django.utils import timezone
from freezegun import freeze_time

from idempotency.models import IdempotencyRecord
from idempotency.tasks import idempotency_purge_expired

pytestmark = pytest.mark.django_db


def _record(key: str, expires_at, status=IdempotencyRecord.Status.COMPLETED) -> IdempotencyRecord:
    return IdempotencyRecord.objects.create(
        scope="anonymous",
        key=key,
        method="POST",
        path="/x",
        request_hash="0" * 64,
        status=status,
        created_at=expires_at - timedelta(hours=24),
        expires_at=expires_at,
    )


@pytest.fixture
def now():
    with freeze_time(timezone.now().replace(microsecond=0)) as frozen:
        yield timezone.now(), frozen


def test_purge_deletes_only_records_expired_strictly_before_now(now):
    current, _ = now
    _record("past", current - timedelta(seconds=1))
    _record("past-processing", current - timedelta(hours=3), IdempotencyRecord.Status.PROCESSING)
    _record("boundary", current)  # expires exactly now: not yet expired
    _record("future", current + timedelta(seconds=1))
    out = StringIO()

    call_command("purge_idempotency", stdout=out)

    assert set(IdempotencyRecord.objects.values_list("key", flat=True)) == {"boundary", "future"}
    assert "Deleted 2 expired idempotency record(s)." in out.getvalue()


def test_dry_run_counts_and_deletes_nothing(now):
    current, _ = now
    _record("a", current - timedelta(minutes=1))
    _record("b", current + timedelta(minutes=1))
    out = StringIO()

    call_command("purge_idempotency", "--dry-run", stdout=out)

    assert IdempotencyRecord.objects.count() == 2
    assert "1 expired idempotency record(s) would be deleted" in out.getvalue()


def test_purge_works_in_batches_and_prints_progress(now):
    current, _ = now
    for index in range(5):
        _record(f"old-{index}", current - timedelta(hours=1, seconds=index))
    _record("live", current + timedelta(hours=1))
    out = StringIO()

    call_command("purge_idempotency", "--batch-size", "2", stdout=out)

    assert list(IdempotencyRecord.objects.values_list("key", flat=True)) == ["live"]
    lines = out.getvalue().splitlines()
    assert [line.strip() for line in lines if "so far" in line] == [
        "deleted 2 so far…",
        "deleted 4 so far…",
        "deleted 5 so far…",
    ]
    assert "Deleted 5 expired idempotency record(s)." in lines[-1]


def test_batch_size_must_be_positive():
    from django.core.management.base import CommandError

    with pytest.raises(CommandError):
        call_command("purge_idempotency", "--batch-size", "0", stdout=StringIO())


def test_beat_task_purges_records_past_the_ttl(now, settings):
    current, clock = now
    settings.IDEMPOTENCY_TTL_HOURS = 24
    _record("created-25h-ago", current - timedelta(hours=1))
    _record("created-now", current + timedelta(hours=24))

    deleted = idempotency_purge_expired.apply().get()

    assert deleted == 1
    assert list(IdempotencyRecord.objects.values_list("key", flat=True)) == ["created-now"]


@pytest.mark.urls("tests.idempotency.urls")
def test_ttl_setting_sets_retention_for_records_created_through_the_api(now, settings, post, executions):
    # given records created through the API with a 2 h retention
    current, clock = now
    settings.IDEMPOTENCY_TTL_HOURS = 2
    first = post("/t/public-things", {"name": "widget"}, key="ttl-reused")
    post("/t/public-things", {"name": "widget"}, key="ttl-idle")

    assert IdempotencyRecord.objects.get(key="ttl-reused").expires_at == current + timedelta(hours=2)
    clock.tick(timedelta(hours=2) - timedelta(seconds=1))
    assert post("/t/public-things", {"name": "widget"}, key="ttl-reused")["Idempotent-Replayed"] == "true"

    # when the 2 h have passed
    clock.tick(timedelta(seconds=2))
    fresh = post("/t/public-things", {"name": "widget"}, key="ttl-reused")
    deleted = idempotency_purge_expired.apply().get()

    # then the key runs again (not replayed) and the idle record is purged
    assert fresh.status_code == 201
    assert "Idempotent-Replayed" not in fresh
    assert fresh.content != first.content
    assert executions == 3
    assert deleted == 1
    record = IdempotencyRecord.objects.get()
    assert record.key == "ttl-reused"
    assert record.expires_at == current + timedelta(hours=4, seconds=1)
