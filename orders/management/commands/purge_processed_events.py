"""Delete processed payment-event ids older than the retention window (what the beat task does)."""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError, CommandParser

from common.command_args import positive_float
from orders import payments


class Command(BaseCommand):
    help = "Delete processed_events rows older than PROCESSED_EVENTS_RETENTION_DAYS."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--days", type=positive_float, default=None, help="Override the retention in days (> 0)."
        )
        parser.add_argument(
            "--all",
            action="store_true",
            help="Every row, whatever its age (a redelivery is then applied again).",
        )
        parser.add_argument(
            "--dry-run", action="store_true", help="Count what would be deleted, delete nothing."
        )

    def handle(self, *args: Any, days: float | None, all: bool, dry_run: bool, **options: Any) -> None:  # noqa: A002
        if all and days is not None:
            raise CommandError("give --days or --all, not both")
        retention = 0.0 if all else (settings.PROCESSED_EVENTS_RETENTION_DAYS if days is None else days)
        what = "whatever their age" if all else f"older than {retention:g} day(s)"
        if dry_run:
            count = payments.processed_events_purge(retention_days=retention, dry_run=True)
            self.stdout.write(
                f"Dry run: {count} processed event(s) would be deleted ({what}); nothing deleted."
            )
            return
        deleted = payments.processed_events_purge(retention_days=retention)
        self.stdout.write(self.style.SUCCESS(f"Deleted {deleted} processed event(s) {what}."))
