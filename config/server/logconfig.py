"""The server's own log lines (startup, shutdown, warnings, access lines) as JSON, like the app's."""

from __future__ import annotations

from typing import Any


def log_config(*, level: str, access_log: bool) -> dict[str, Any]:
    handler = {
        "class": "logging.StreamHandler",
        "formatter": "json",
        "filters": ["correlation"],
        "stream": "ext://sys.stderr",
    }
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"json": {"()": "common.logging.JsonFormatter"}},
        "filters": {"correlation": {"()": "common.logging.CorrelationIdFilter"}},
        "handlers": {"json": handler},
        "loggers": {
            "uvicorn": {"handlers": ["json"], "level": level.upper(), "propagate": False},
            "uvicorn.error": {"level": level.upper()},
            "uvicorn.access": {
                "handlers": ["json"],
                "level": "INFO" if access_log else "WARNING",
                "propagate": False,
            },
        },
    }
