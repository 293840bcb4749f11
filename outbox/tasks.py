"""Celery entry points; the services do the work and are idempotent (safe to run twice)."""

from __future__ import annotations

from celery import shared_task
from django.conf import settings

from outbox.relay import outbox_relay_drain
from outbox.services import RELAY_TASK_NAME
from outbox.services import outbox_purge_published as purge_published


@shared_task(name=RELAY_TASK_NAME, ignore_result=True)
def outbox_relay() -> int:
    """Relay until nothing is claimable; bounded so a huge backlog never hits the time limit."""
    budget = max(1.0, settings.CELERY_TASK_SOFT_TIME_LIMIT / 2)
    return outbox_relay_drain(max_seconds=budget).published


@shared_task(name="outbox.tasks.outbox_purge_published", ignore_result=True)
def outbox_purge_published() -> int:
    return purge_published()
