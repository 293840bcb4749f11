"""Delete published outbox events older than the retention window."""

from __future__ import annotations

from datetime import timedelta

from django.conf import settings
from django.core.management.base import BaseCommand, CommandParser

from outbox.services import outbox_purge_published


class Command(BaseCommand):
    help = "Delete published outbox events older than OUTBOX_RETENTION_DAYS (batched)."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--days", type=float, default=None)

    def handle(self, *args: object, **options: object) -> None:
        days = options["days"] if options["days"] is not None else settings.OUTBOX_RETENTION_DAYS
        deleted = outbox_purge_published(older_than=timedelta(days=float(days)))  # type: ignore[arg-type]
        self.stdout.write(f"{deleted} published events deleted (older than {days} days)")
