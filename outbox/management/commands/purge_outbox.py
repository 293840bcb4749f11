"""Delete published outbox events older than the retention window."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError, CommandParser

from common.command_args import positive_float
from outbox.services import outbox_purge_published


class Command(BaseCommand):
    help = "Delete published outbox events older than OUTBOX_RETENTION_DAYS (batched)."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--days",
            type=positive_float,
            default=None,
            help="retention in days, > 0 (default OUTBOX_RETENTION_DAYS)",
        )
        parser.add_argument("--all", action="store_true", help="every published event, whatever its age")
        parser.add_argument(
            "--dry-run", action="store_true", help="count what would be deleted, delete nothing"
        )

    def handle(self, *args: Any, days: float | None, all: bool, dry_run: bool, **options: Any) -> None:  # noqa: A002
        if all and days is not None:
            raise CommandError("give --days or --all, not both")
        if all:
            older_than, what = timedelta(0), "every published event"
        else:
            days = settings.OUTBOX_RETENTION_DAYS if days is None else days
            older_than, what = timedelta(days=float(days)), f"published events older than {days} days"
        if dry_run:
            count = outbox_purge_published(older_than=older_than, dry_run=True)
            self.stdout.write(f"dry run: {count} event(s) would be deleted ({what}); nothing deleted")
            return
        deleted = outbox_purge_published(older_than=older_than)
        self.stdout.write(f"{deleted} published events deleted ({what})")
