"""The Celery app; tasks carry the correlation id of the request that enqueued them."""

import os

from celery import Celery, signals

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings.local")

app = Celery("gatehouse")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()


@signals.before_task_publish.connect
def _attach_correlation_id(headers: dict | None = None, **_: object) -> None:
    from common.correlation import get_correlation_id

    if headers is not None and get_correlation_id():
        headers.setdefault("correlation_id", get_correlation_id())


@signals.task_prerun.connect
def _restore_correlation_id(task=None, **_: object) -> None:  # type: ignore[no-untyped-def]
    from common.correlation import new_correlation_id, set_correlation_id

    incoming = getattr(task.request, "correlation_id", None) if task else None
    set_correlation_id(incoming or new_correlation_id())
