"""Relay the outbox from the command line: once until empty, or forever with --loop."""

from __future__ import annotations

import argparse
import sys
import time

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError, CommandParser

from common.command_args import positive_float, positive_int
from outbox.relay import BatchResult, DrainResult, RelayHooks, outbox_relay_drain


class Command(BaseCommand):
    help = "Publish pending outbox events (exit status 1 if any publish failed)."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--loop", action="store_true", help="keep relaying until stopped")
        parser.add_argument("--batch-size", type=positive_int, default=None)
        parser.add_argument(
            "--interval",
            type=positive_float,
            default=None,
            help="seconds to wait when idle in --loop (default OUTBOX_RELAY_INTERVAL_SECONDS)",
        )
        # Fault injection for the crash tests: print a marker and stall at that point.
        parser.add_argument("--pause-after", choices=["claim", "publish"], help=argparse.SUPPRESS)

    def handle(self, *args: object, **options: object) -> None:
        hooks = _pause_hooks(options.get("pause_after"))  # type: ignore[arg-type]
        batch_size = options["batch_size"] or settings.OUTBOX_BATCH_SIZE
        interval = options["interval"] or settings.OUTBOX_RELAY_INTERVAL_SECONDS
        failed = 0
        try:
            while True:
                result = outbox_relay_drain(batch_size=batch_size, hooks=hooks, on_batch=self._progress)
                failed += result.failed
                if result.batches or not options["loop"]:
                    self.stdout.write(
                        f"drained: {result.published} published, {result.failed} failed, "
                        f"{result.dead} dead in {result.seconds:.2f}s"
                    )
                if not options["loop"]:
                    break
                time.sleep(interval)
        except KeyboardInterrupt:
            pass
        if failed:
            raise CommandError(f"{failed} publish attempts failed (see last_error)")

    def _progress(self, batch: BatchResult, total: DrainResult) -> None:
        self.stdout.write(
            f"batch {total.batches}: claimed {batch.claimed}, published {batch.published}, "
            f"failed {batch.failed}, dead {batch.dead} (total published {total.published})"
        )
        self.stdout.flush()


def _pause_hooks(point: str | None) -> RelayHooks | None:
    if not point:
        return None

    def pause(_: object) -> None:
        sys.stdout.write(f"PAUSED after {point}\n")
        sys.stdout.flush()
        time.sleep(3600)

    return RelayHooks(**{f"after_{point}": pause})
