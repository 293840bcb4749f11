"""Writing events into the outbox, inside the caller's business transaction."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import timedelta
from typing import Any

from django.db import transaction
from django.utils import timezone

from common.correlation import get_correlation_id
from common.errors import ApplicationError
from outbox.models import OutboxEvent


class OutboxOutsideTransaction(ApplicationError):
    status, slug, title = 500, "outbox-outside-transaction", "Outbox write outside a transaction"


def outbox_publish(
    *,
    aggregatetype: str,
    aggregateid: str,
    type: str,
    payload: dict[str, Any],
    headers: dict[str, str] | None = None,
    using: str = "default",
) -> OutboxEvent:
    """Record an event in the current transaction; it is relayed only if that transaction commits."""
    if not transaction.get_connection(using).in_atomic_block:
        raise OutboxOutsideTransaction(
            "outbox_publish() must run inside the business transaction (transaction.atomic)."
        )
    event_headers = {"correlation_id": get_correlation_id(), **(headers or {})}
    return OutboxEvent.objects.using(using).create(
        aggregatetype=aggregatetype,
        aggregateid=str(aggregateid),
        type=type,
        payload=payload,
        headers={key: value for key, value in event_headers.items() if value},
    )


def outbox_publish_many(
    *,
    events: Iterable[Mapping[str, Any]],
    using: str = "default",
    batch_size: int = 2000,
) -> int:
    """Record many events in the current transaction with one multi-row INSERT per batch.

    Each event is a mapping with `aggregatetype`, `aggregateid`, `type`, `payload` and optional
    `headers` (as for outbox_publish). Bulk writers (the order expiry sweep: up to a million rows)
    would spend most of their time in per-row INSERT round trips otherwise. Events are given
    strictly increasing `created_at` in iteration order, so several events of one aggregate in
    one call keep their order. Returns the number of events written.
    """
    if not transaction.get_connection(using).in_atomic_block:
        raise OutboxOutsideTransaction(
            "outbox_publish_many() must run inside the business transaction (transaction.atomic)."
        )
    correlation_id = get_correlation_id()
    base = timezone.now()
    rows = []
    for index, event in enumerate(events):
        event_headers = {"correlation_id": correlation_id, **(event.get("headers") or {})}
        rows.append(
            OutboxEvent(
                aggregatetype=event["aggregatetype"],
                aggregateid=str(event["aggregateid"]),
                type=event["type"],
                payload=event["payload"],
                headers={key: value for key, value in event_headers.items() if value},
                created_at=base + timedelta(microseconds=index),
                available_at=base,
            )
        )
    if rows:
        OutboxEvent.objects.using(using).bulk_create(rows, batch_size=batch_size)
    return len(rows)
