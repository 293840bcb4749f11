"""Expire every pending order whose session is over (what the beat task does), with progress."""

from __future__ import annotations

import time
from typing import Any

from django.core.management.base import BaseCommand, CommandParser
from django.utils import timezone

from common.command_args import positive_int
from orders import expiry, selectors


class Command(BaseCommand):
    help = "Expire pending orders past their expiration time (batches, SKIP LOCKED, one event each)."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--dry-run", action="store_true", help="Count the due orders, change nothing.")
        parser.add_argument(
            "--batch-size", type=positive_int, default=5000, help="Orders per transaction (5000)."
        )

    def handle(self, *args: Any, dry_run: bool, batch_size: int, **options: Any) -> None:
        now = timezone.now()
        if dry_run:
            due = selectors.order_due_count(now=now)
            self.stdout.write(f"Dry run: {due} pending order(s) due at {now.isoformat()} would be expired.")
            return
        started = time.monotonic()

        def progress(batch: int, total: int) -> None:
            self.stdout.write(
                f"  expired {total} order(s) so far (+{batch}, {time.monotonic() - started:.1f} s)"
            )

        total = expiry.order_expire_due(now=now, batch_size=batch_size, progress=progress)
        self.stdout.write(
            self.style.SUCCESS(f"Expired {total} order(s) in {time.monotonic() - started:.1f} s.")
        )
