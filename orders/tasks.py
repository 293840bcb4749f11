"""Celery tasks: thin wrappers over idempotent services (safe to run twice or overlapping)."""

from __future__ import annotations

from celery import shared_task

from orders import expiry, payments


@shared_task(name="orders.tasks.orders_expire_due", ignore_result=True)
def orders_expire_due() -> int:
    return expiry.order_expire_due()


@shared_task(name="orders.tasks.processed_events_purge", ignore_result=True)
def processed_events_purge() -> int:
    return payments.processed_events_purge()
