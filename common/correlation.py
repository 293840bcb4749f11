"""The correlation id of the work in progress, held in a contextvar (no leak between requests)."""

import re
import uuid
from contextvars import ContextVar

_correlation_id: ContextVar[str] = ContextVar("correlation_id", default="")
_VALID = re.compile(r"^[A-Za-z0-9._:\-]{1,128}$")


def new_correlation_id() -> str:
    return uuid.uuid4().hex


def get_correlation_id() -> str:
    return _correlation_id.get()


def set_correlation_id(value: str):  # type: ignore[no-untyped-def]
    """Set the id for the current context; returns the token to reset it with."""
    return _correlation_id.set(value)


def reset_correlation_id(token) -> None:  # type: ignore[no-untyped-def]
    _correlation_id.reset(token)


def accept_correlation_id(value: str | None) -> str:
    """Keep a client's id when it is a sane token, otherwise mint one (never log raw junk)."""
    if value and _VALID.match(value):
        return value
    return new_correlation_id()
