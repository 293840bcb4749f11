"""Every manage.py command validates its numbers (a usage error, never a traceback), and the purges
have --dry-run and refuse to delete everything unless told so with --all."""

from __future__ import annotations

import os
import subprocess
import sys
from datetime import timedelta
from io import StringIO
from pathlib import Path

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError
from django.utils import timezone

from gateway.models import RevokedToken
from orders.models import ProcessedEvent
from outbox.models import OutboxEvent
from tests.orders.factories import ProcessedEventFactory
from tests.outbox.factories import OutboxEventFactory

pytestmark = pytest.mark.django_db

ROOT = Path(__file__).resolve().parents[2]

BAD_NUMBERS = [
    ("purge_outbox", "--days", "-1"),
    ("purge_outbox", "--days", "0"),
    ("purge_outbox", "--days", "nan"),
    ("purge_processed_events", "--days", "-1"),
    ("purge_processed_events", "--days", "0"),
    ("purge_idempotency", "--batch-size", "0"),
    ("expire_orders", "--batch-size", "-1"),
    ("expire_orders", "--batch-size", "0"),
    ("drain_outbox", "--batch-size", "-3"),
    ("drain_outbox", "--interval", "0"),
    ("consume_payment_events", "--max-messages", "0"),
    ("consume_payment_events", "--timeout", "-5"),
    ("revoke_token", "some-jti", "--ttl", "0"),
    ("dev_token", "--ttl", "-60"),
    ("expire_orders", "--batch-size", "many"),
]


@pytest.mark.parametrize("argv", BAD_NUMBERS, ids=" ".join)
def test_a_bad_number_is_a_command_error_and_changes_nothing(argv):
    published = OutboxEventFactory(status="published", published_at=timezone.now() - timedelta(days=1))
    processed = ProcessedEventFactory(processed_at=timezone.now() - timedelta(days=1))

    with pytest.raises(CommandError, match="must be a positive|is not an"):
        call_command(*argv, stdout=StringIO(), stderr=StringIO())

    assert OutboxEvent.objects.filter(pk=published.pk).exists()
    assert ProcessedEvent.objects.filter(pk=processed.pk).exists()
    assert not RevokedToken.objects.exists()


def _manage(*argv: str) -> subprocess.CompletedProcess:
    from django.db import connection

    db = connection.settings_dict  # the test database, so the child sees this test's rows
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "config.settings.test",
        "DATABASE_URL": f"postgres://{db['USER']}@{db['HOST']}:{db['PORT']}/{db['NAME']}",
    }
    return subprocess.run(
        [sys.executable, "manage.py", *argv], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120
    )


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize(
    "argv",
    [
        ("purge_outbox", "--days", "-1"),
        ("purge_processed_events", "--days", "0"),
        ("expire_orders", "--batch-size", "-1"),
        ("drain_outbox", "--batch-size", "-3"),
    ],
    ids=" ".join,
)
def test_through_manage_py_a_bad_number_exits_2_with_a_usage_line_and_no_traceback(argv):
    OutboxEventFactory(status="published", published_at=timezone.now() - timedelta(days=1))
    ProcessedEventFactory(processed_at=timezone.now() - timedelta(days=1))

    result = _manage(*argv)

    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    assert "must be a positive" in result.stderr
    assert OutboxEvent.objects.count() == 1 and ProcessedEvent.objects.count() == 1


@pytest.mark.django_db(transaction=True)
def test_through_manage_py_dry_run_prints_the_count_and_deletes_nothing():
    OutboxEventFactory.create_batch(2, status="published", published_at=timezone.now() - timedelta(days=30))

    result = _manage("purge_outbox", "--days", "7", "--dry-run")

    assert result.returncode == 0, result.stderr
    assert "dry run: 2 event(s) would be deleted" in result.stdout
    assert OutboxEvent.objects.count() == 2


def test_purge_outbox_dry_run_counts_and_deletes_nothing():
    old = timezone.now() - timedelta(days=10)
    OutboxEventFactory.create_batch(3, status="published", published_at=old)
    OutboxEventFactory(status="published", published_at=timezone.now())
    out = StringIO()

    call_command("purge_outbox", "--days", "7", "--dry-run", stdout=out)

    assert "dry run: 3 event(s) would be deleted" in out.getvalue()
    assert OutboxEvent.objects.count() == 4


def test_purge_outbox_all_is_explicit_and_keeps_pending_and_dead_events():
    OutboxEventFactory(status="published", published_at=timezone.now() - timedelta(minutes=1))
    pending = OutboxEventFactory()
    dead = OutboxEventFactory(status="dead")
    out = StringIO()

    call_command("purge_outbox", "--all", "--dry-run", stdout=out)
    assert "dry run: 1 event(s) would be deleted" in out.getvalue()
    call_command("purge_outbox", "--all", stdout=out)

    assert set(OutboxEvent.objects.values_list("pk", flat=True)) == {pending.pk, dead.pk}
    with pytest.raises(CommandError, match="not both"):
        call_command("purge_outbox", "--all", "--days", "3")


def test_purge_processed_events_dry_run_and_all():
    ProcessedEventFactory(processed_at=timezone.now() - timedelta(days=3))
    ProcessedEventFactory(processed_at=timezone.now() - timedelta(hours=1))
    out = StringIO()

    call_command("purge_processed_events", "--days", "2", "--dry-run", stdout=out)
    assert "Dry run: 1 processed event(s) would be deleted" in out.getvalue()
    assert ProcessedEvent.objects.count() == 2

    call_command("purge_processed_events", "--all", "--dry-run", stdout=out)
    assert "Dry run: 2 processed event(s) would be deleted" in out.getvalue()
    assert ProcessedEvent.objects.count() == 2

    call_command("purge_processed_events", "--all", stdout=out)
    assert ProcessedEvent.objects.count() == 0
    with pytest.raises(CommandError, match="not both"):
        call_command("purge_processed_events", "--all", "--days", "3")


def test_revoke_token_purge_expired_has_a_dry_run():
    RevokedToken.objects.create(jti="old", expires_at=timezone.now() - timedelta(hours=1))
    out = StringIO()

    call_command("revoke_token", "--purge-expired", "--dry-run", stdout=out)

    assert "dry run: 1 revocation(s)" in out.getvalue()
    assert RevokedToken.objects.filter(jti="old").exists()
    call_command("revoke_token", "--purge-expired", stdout=out)
    assert not RevokedToken.objects.exists()
