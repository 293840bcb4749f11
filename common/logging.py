"""JSON log lines, each carrying the correlation id of the work that wrote it."""

import logging

from pythonjsonlogger.json import JsonFormatter as _JsonFormatter

from common.correlation import get_correlation_id


class CorrelationIdFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        record.correlation_id = get_correlation_id()
        return True


class JsonFormatter(_JsonFormatter):
    def __init__(self, *args, **kwargs) -> None:  # type: ignore[no-untyped-def]
        kwargs.setdefault("fmt", "%(asctime)s %(levelname)s %(name)s %(message)s %(correlation_id)s")
        kwargs.setdefault("rename_fields", {"asctime": "time", "levelname": "level", "name": "logger"})
        super().__init__(*args, **kwargs)
