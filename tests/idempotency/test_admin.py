"""The records in Django admin: visible, searchable by key, filterable by status, read-only."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.contrib.auth import get_user_model
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from idempotency.models import IdempotencyRecord

pytestmark = pytest.mark.django_db


@pytest.fixture
def staff_client(client):
    user = get_user_model().objects.create_superuser("admin", "admin@example.com", "pw")
    client.force_login(user)
    return client


def _record(key: str, status: str) -> IdempotencyRecord:
    now = timezone.now()
    return IdempotencyRecord.objects.create(
        scope="anonymous",
        key=key,
        method="POST",
        path="/register",
        request_hash="0" * 64,
        status=status,
        response_status=201,
        response_body=b'{"ok": true}',
        created_at=now,
        expires_at=now + timedelta(hours=24),
    )


def test_changelist_searches_by_key_and_filters_by_status(staff_client):
    _record("alpha-key", "completed")
    _record("beta-key", "failed")
    url = "/admin/idempotency/idempotencyrecord/"

    searched = staff_client.get(url, {"q": "alpha-key"})
    filtered = staff_client.get(url, {"status__exact": "failed"})

    assert searched.status_code == 200
    assert "alpha-key" in searched.content.decode()
    assert "beta-key" not in searched.content.decode()
    assert "beta-key" in filtered.content.decode()
    assert "alpha-key" not in filtered.content.decode()


def test_records_cannot_be_added_changed_or_deleted(staff_client):
    record = _record("gamma-key", "completed")
    base = "/admin/idempotency/idempotencyrecord/"

    assert staff_client.get(f"{base}add/").status_code == 403
    detail = staff_client.get(f"{base}{record.pk}/change/")
    assert detail.status_code == 200  # viewable
    assert "gamma-key" in detail.content.decode()
    assert staff_client.post(f"{base}{record.pk}/change/", {"key": "changed"}).status_code == 403
    assert staff_client.post(f"{base}{record.pk}/delete/", {"post": "yes"}).status_code == 403
    assert IdempotencyRecord.objects.get(pk=record.pk).key == "gamma-key"


def test_changelist_lists_newest_first_without_sorting_or_scanning_created_at(staff_client):
    # created_at has no index: ordering by it sorts the whole table, and a date hierarchy on it
    # runs MIN/MAX and DISTINCT date_trunc over every row, on each page view of a large table.
    _record("older-key", "completed")
    _record("newer-key", "completed")

    with CaptureQueriesContext(connection) as queries:
        response = staff_client.get("/admin/idempotency/idempotencyrecord/")

    on_records = [
        query["sql"] for query in queries.captured_queries if '"idempotency_record"' in query["sql"]
    ]
    (page,) = [sql for sql in on_records if '"idempotency_record"."key"' in sql]
    assert 'ORDER BY "idempotency_record"."id" DESC' in page
    assert '"created_at"' not in page.split(" FROM ", 1)[1]  # only displayed, never sorted on
    assert '"response_body"' not in page  # stored bodies (up to 1 MiB each) stay in the table
    assert not [sql for sql in on_records if sql != page and '"created_at"' in sql]
    content = response.content.decode()
    assert content.index("newer-key") < content.index("older-key")
