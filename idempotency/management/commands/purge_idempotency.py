from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.utils import timezone

from common.command_args import positive_int
from idempotency.services import idempotency_purge_expired


class Command(BaseCommand):
    help = "Delete idempotency records whose expires_at is before now, in batches."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--dry-run", action="store_true", help="Count what would be deleted.")
        parser.add_argument(
            "--batch-size", type=positive_int, default=1000, help="Rows per DELETE (default 1000)."
        )

    def handle(self, *args: Any, dry_run: bool, batch_size: int, **options: Any) -> None:
        if batch_size < 1:
            raise CommandError("--batch-size must be at least 1")
        now = timezone.now()
        if dry_run:
            count = idempotency_purge_expired(dry_run=True, now=now)
            self.stdout.write(f"Dry run: {count} expired idempotency record(s) would be deleted.")
            return

        def progress(total: int) -> None:
            self.stdout.write(f"  deleted {total} so far…")

        try:
            total = idempotency_purge_expired(batch_size=batch_size, now=now, progress=progress)
        except Exception as exc:
            raise CommandError(f"purge failed: {exc}") from exc
        self.stdout.write(self.style.SUCCESS(f"Deleted {total} expired idempotency record(s)."))
