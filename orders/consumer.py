"""Payment events from the broker: the same handler as the HTTP intake, acked after the commit.

A message is acked only once `payment_event_handle` has committed (a crash before the ack means a
redelivery, which processed_events turns into a no-op). A message that can never succeed (bad
JSON, invalid fields, unknown order, amount mismatch, an unexpected error) is copied to the
`<queue>.dead` queue with the reason in its headers, logged, and acked: never requeued forever.
Only a database outage requeues the message and stops the consumer (its supervisor restarts it).
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from django.conf import settings
from django.db import InterfaceError, OperationalError
from kombu import Connection, Consumer, Exchange, Producer, Queue
from kombu.message import Message

from common.errors import ApplicationError
from orders import payments

logger = logging.getLogger(__name__)


class BrokerConsumerStopped(Exception):
    """The database is unreachable: the message was requeued and consuming stopped."""


def payment_events_broker_url() -> str:
    return settings.PAYMENT_EVENTS_BROKER_URL or settings.CELERY_BROKER_URL


def payment_events_queues(name: str) -> tuple[Queue, Queue]:
    """The work queue and its dead-letter queue (default exchange, routing key = queue name)."""
    default = Exchange("", type="direct")
    return (
        Queue(name, exchange=default, routing_key=name, durable=True),
        Queue(f"{name}.dead", exchange=default, routing_key=f"{name}.dead", durable=True),
    )


@dataclass
class ConsumeReport:
    outcomes: Counter[str] = field(default_factory=Counter)

    @property
    def consumed(self) -> int:
        return sum(self.outcomes.values())


def payment_events_consume(
    *,
    queue_name: str | None = None,
    broker_url: str | None = None,
    max_messages: int | None = None,
    idle_timeout: float | None = None,
    on_message: Any = None,
) -> ConsumeReport:
    """Consume until `max_messages` were handled or nothing arrived for `idle_timeout` seconds."""
    queue_name = queue_name or settings.PAYMENT_EVENTS_QUEUE
    url = broker_url or payment_events_broker_url()
    transport_options = settings.CELERY_BROKER_TRANSPORT_OPTIONS if url == settings.CELERY_BROKER_URL else {}
    report = ConsumeReport()
    work_queue, dead_queue = payment_events_queues(queue_name)

    with Connection(url, connect_timeout=5, transport_options=transport_options) as connection:
        connection.ensure_connection(max_retries=2, interval_start=0.2, interval_step=0.5)
        channel = connection.channel()
        work_queue(channel).declare()
        dead_queue(channel).declare()
        dead_letters = Producer(channel)

        def handle(message: Message) -> None:
            outcome = _handle_message(message, dead_letters=dead_letters, dead_queue=dead_queue)
            report.outcomes[outcome] += 1
            if on_message is not None:
                on_message(outcome, report)

        consumer = Consumer(channel, queues=[work_queue], on_message=handle, prefetch_count=1)
        consumer.consume()
        last_activity = time.monotonic()
        try:
            while max_messages is None or report.consumed < max_messages:
                before = report.consumed
                try:
                    connection.drain_events(timeout=1.0)
                except TimeoutError:  # socket.timeout: nothing arrived within a second
                    connection.heartbeat_check()
                if report.consumed != before:
                    last_activity = time.monotonic()
                elif idle_timeout is not None and time.monotonic() - last_activity >= idle_timeout:
                    break
        finally:
            consumer.cancel()
    return report


def _handle_message(message: Message, *, dead_letters: Producer, dead_queue: Queue) -> str:
    body = message.body
    try:
        event = payments.payment_event_parse(body=body)
        result = payments.payment_event_handle(event=event, channel="broker")
    except (OperationalError, InterfaceError) as exc:
        # The database is down: this is not the message's fault. Put it back and stop.
        message.requeue()
        raise BrokerConsumerStopped(f"database unavailable: {exc}") from exc
    except Exception as exc:  # a permanent refusal (ApplicationError) or a bug: never a hot loop
        reason = f"{getattr(exc, 'slug', type(exc).__name__)}: {getattr(exc, 'detail', exc)}"
        if isinstance(exc, ApplicationError):
            logger.warning("payment event rejected to %s: %s", dead_queue.name, reason)
        else:
            logger.exception("payment event failed unexpectedly; moved to %s", dead_queue.name)
        dead_letters.publish(
            body if isinstance(body, bytes | str) else str(body),
            routing_key=dead_queue.routing_key,
            exchange="",
            content_type=message.content_type or "application/json",
            content_encoding=message.content_encoding or "utf-8",
            headers={**(message.headers or {}), "x-rejection-reason": reason[:1000]},
            declare=[dead_queue],
            retry=True,
        )
        message.ack()
        return "dead_lettered"
    message.ack()
    return "duplicate" if result.duplicate else result.outcome
