"""JSON log lines, each carrying the correlation id and W3C trace id of the work that wrote it."""

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
        record.trace_id = get_trace_id()
        return True


class JsonFormatter(_JsonFormatter):
    def __init__(self, *args, **kwargs) -> None:  # type: ignore[no-untyped-def]
        kwargs.setdefault(
            "fmt", "%(asctime)s %(levelname)s %(name)s %(message)s %(correlation_id)s %(trace_id)s"
        )
        kwargs.setdefault("rename_fields", {"asctime": "time", "levelname": "level", "name": "logger"})
        super().__init__(*args, **kwargs)
