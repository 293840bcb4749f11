"""Celery tasks for idempotency (scheduled by beat, see config/settings/celery.py)."""

from __future__ import annotations

from celery import shared_task

from idempotency.services import idempotency_purge_expired as purge_expired


@shared_task(name="idempotency.tasks.idempotency_purge_expired")
def idempotency_purge_expired() -> int:
    """Delete records past IDEMPOTENCY_TTL_HOURS; safe to run concurrently or twice."""
    return purge_expired()
