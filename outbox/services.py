"""Writing events into the outbox, inside the caller's business transaction."""

from __future__ import annotations

from typing import Any

from django.db import transaction

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
