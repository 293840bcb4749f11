"""Celery tasks of the gateway: thin wrappers over idempotent services."""

from __future__ import annotations

from celery import shared_task

from gateway.services.revocation import revoked_tokens_purge


@shared_task(name="gateway.tasks.revoked_tokens_purge", ignore_result=True)
def revoked_tokens_purge_task() -> int:
    """Revocation records only need to outlive their tokens."""
    return revoked_tokens_purge()
