"""Delete processed payment-event ids older than the retention window (what the beat task does)."""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandParser

from orders import payments


class Command(BaseCommand):
    help = "Delete processed_events rows older than PROCESSED_EVENTS_RETENTION_DAYS."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--days", type=int, default=None, help="Override the retention in days.")

    def handle(self, *args: Any, days: int | None, **options: Any) -> None:
        retention = settings.PROCESSED_EVENTS_RETENTION_DAYS if days is None else days
        deleted = payments.processed_events_purge(retention_days=retention)
        self.stdout.write(
            self.style.SUCCESS(f"Deleted {deleted} processed event(s) older than {retention} day(s).")
        )
