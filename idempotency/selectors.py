"""Reads of idempotency records."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from django.db.models import QuerySet

from idempotency.models import IdempotencyRecord


def idempotency_record_state_get(*, scope: str, key: str) -> dict[str, Any] | None:
    """The fields that decide how a repeated key is answered, or None."""
    return (
        IdempotencyRecord.objects.filter(scope=scope, key=key)
        .values(
            "request_hash",
            "status",
            "locked_until",
            "response_status",
            "response_body",
            "response_content_type",
            "response_location",
            "response_stored",
            "expires_at",
        )
        .first()
    )


def idempotency_record_expired(*, now: datetime) -> QuerySet[IdempotencyRecord]:
    """Records past retention; strictly `<`, so a record expiring exactly now is kept."""
    return IdempotencyRecord.objects.filter(expires_at__lt=now)
