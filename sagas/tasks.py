"""Celery entry points: thin, by id; the services are idempotent (safe to run twice)."""

from __future__ import annotations

from celery import shared_task

from sagas import services


@shared_task(name=services.STEP_TASK_NAME, ignore_result=True)
def saga_step_run(*, saga_id: str, name: str, kind: str) -> str:
    return services.saga_step_run(saga_id=saga_id, name=name, kind=kind).outcome


@shared_task(name="sagas.sweep", ignore_result=True)
def saga_sweep() -> dict[str, int]:
    return services.saga_sweep()
