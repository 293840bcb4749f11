"""The W3C trace id of the work in progress, in a contextvar (next to the correlation id)."""

from contextvars import ContextVar

_trace_id: ContextVar[str] = ContextVar("trace_id", default="")


def get_trace_id() -> str:
    return _trace_id.get()


def set_trace_id(value: str):  # type: ignore[no-untyped-def]
    """Set the trace id for the current context; returns the token to reset it with."""
    return _trace_id.set(value)


def reset_trace_id(token) -> None:  # type: ignore[no-untyped-def]
    _trace_id.reset(token)
