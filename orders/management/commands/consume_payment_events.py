"""Consume payment events from the broker through the same handler as POST /api/payments/events."""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError, CommandParser
from kombu.exceptions import OperationalError as BrokerError

from common.command_args import positive_float, positive_int
from orders.consumer import BrokerConsumerStopped, payment_events_broker_url, payment_events_consume


class Command(BaseCommand):
    help = (
        "Consume payment events from the kombu queue PAYMENT_EVENTS_QUEUE on PAYMENT_EVENTS_BROKER_URL "
        "(or the Celery broker). Acks after the database commit; bad messages go to <queue>.dead."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--queue", default=None, help="Queue name (default PAYMENT_EVENTS_QUEUE).")
        parser.add_argument("--broker-url", default=None, help="Broker URL (default from settings).")
        parser.add_argument("--max-messages", type=positive_int, default=None, help="Stop after N messages.")
        parser.add_argument(
            "--timeout",
            type=positive_float,
            default=None,
            help="Stop after this many seconds without a message.",
        )

    def handle(
        self,
        *args: Any,
        queue: str | None,
        broker_url: str | None,
        max_messages: int | None,
        timeout: float | None,
        **options: Any,
    ) -> None:
        queue = queue or settings.PAYMENT_EVENTS_QUEUE
        self.stdout.write(f"Consuming payment events from queue {queue!r}…")
        verbosity = options.get("verbosity", 1)

        def progress(outcome: str, report: Any) -> None:
            if verbosity >= 2 or report.consumed % 100 == 0:
                self.stdout.write(f"  {report.consumed} message(s) handled (last: {outcome})")

        try:
            report = payment_events_consume(
                queue_name=queue,
                broker_url=broker_url or payment_events_broker_url(),
                max_messages=max_messages,
                idle_timeout=timeout,
                on_message=progress,
            )
        except BrokerConsumerStopped as exc:
            raise CommandError(f"Stopped: {exc}. The message was requeued.") from exc
        except (BrokerError, OSError) as exc:
            raise CommandError(f"Broker unavailable: {exc}") from exc
        summary = ", ".join(f"{name}={count}" for name, count in sorted(report.outcomes.items())) or "none"
        self.stdout.write(self.style.SUCCESS(f"Consumed {report.consumed} message(s): {summary}."))
