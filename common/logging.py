"""JSON log lines, each carrying the correlation id and W3C trace id of the work that wrote it."""

import ast
import logging

from pythonjsonlogger.json import JsonFormatter as _JsonFormatter

from common.correlation import get_correlation_id
from common.tracing import get_trace_id


class CorrelationIdFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        correlation_id = get_correlation_id()
        if not correlation_id:
            # Django logs a request's 4xx/5xx line ("Internal Server Error: /x") after the whole
            # middleware stack returned, so after the contextvar was reset; the record carries
            # the request, which carries its id.
            correlation_id = getattr(getattr(record, "request", None), "correlation_id", "")
        record.correlation_id = correlation_id
        record.trace_id = get_trace_id() or getattr(getattr(record, "request", None), "trace_id", "")
        return True


def _current_task():  # type: ignore[no-untyped-def]
    from celery import current_task

    task = current_task._get_current_object() if current_task else None
    return task if task is not None and getattr(task.request, "id", None) else None


class TaskFilter(logging.Filter):
    """Adds `task_name` / `task_id` to lines written while a Celery task runs."""

    def filter(self, record: logging.LogRecord) -> bool:
        task = _current_task()
        if task is not None and not hasattr(record, "task_id"):
            record.task_name = task.name
            record.task_id = task.request.id
        return True


# Celery's per-task lines: "Task x[id] received", "Task x[id] succeeded in 0.01s: 0", and beat's
# "Scheduler: Sending due task". The periodic ticks (relay every few seconds) would fill the log.
_TICK_LOGGERS = frozenset({"celery.worker.strategy", "celery.app.trace", "celery.beat"})


def _did_nothing(value: object) -> bool:
    """A task's return value (Celery logs its repr) that says no work was done: 0, None, or a
    mapping of counts that are all 0 (e.g. the saga sweep's {'enqueued': 0, 'compensated': 0})."""
    if isinstance(value, str):
        try:
            value = ast.literal_eval(value)
        except (ValueError, SyntaxError, MemoryError, RecursionError):
            return False
    if isinstance(value, dict):
        return all(count in (0, None) for count in value.values())
    return value in (0, None)


class QuietTicksFilter(logging.Filter):
    """Routine scheduling lines become DEBUG: a task received, a beat entry sent, and a task that
    succeeded having done nothing (returned 0 or None). A task that did work (returned a count
    above 0, e.g. events relayed) stays at INFO, and so does anything about a failure."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.name not in _TICK_LOGGERS or record.levelno != logging.INFO:
            return True
        message = str(record.msg)
        routine = "received" in message or message.startswith("Scheduler: Sending due task")
        if "succeeded" in message and isinstance(record.args, dict):
            routine = _did_nothing(record.args.get("return_value"))
        if not routine:
            return True
        record.levelno, record.levelname = logging.DEBUG, "DEBUG"
        return logging.getLogger().isEnabledFor(logging.DEBUG)


class JsonFormatter(_JsonFormatter):
    def __init__(self, *args, **kwargs) -> None:  # type: ignore[no-untyped-def]
        kwargs.setdefault(
            "fmt", "%(asctime)s %(levelname)s %(name)s %(message)s %(correlation_id)s %(trace_id)s"
        )
        kwargs.setdefault("rename_fields", {"asctime": "time", "levelname": "level", "name": "logger"})
        super().__init__(*args, **kwargs)
