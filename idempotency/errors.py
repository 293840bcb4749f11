"""The problems idempotency answers with (problem+json through common.errors)."""

from __future__ import annotations

from django.conf import settings

from common.errors import ApplicationError


class IdempotencyKeyInvalid(ApplicationError):
    status, slug, title = 400, "idempotency-key-invalid", "Invalid Idempotency-Key"


class IdempotencyKeyMissing(ApplicationError):
    status, slug, title = 400, "idempotency-key-missing", "Idempotency-Key required"

    def __init__(self, detail: str | None = None, **kw) -> None:
        super().__init__(detail or "This request requires an Idempotency-Key header.", **kw)


class IdempotencyKeyReused(ApplicationError):
    """Same key, different request: 409 by default, 422 (the IETF draft's choice) by setting."""

    status, slug, title = 409, "idempotency-key-reused", "Idempotency-Key reused"

    def __init__(self, detail: str | None = None, **kw) -> None:
        kw.setdefault("status", settings.IDEMPOTENCY_MISMATCH_STATUS)
        super().__init__(detail or "This Idempotency-Key was already used for a different request.", **kw)


class IdempotencyInProgress(ApplicationError):
    status, slug, title = 409, "idempotency-in-progress", "Request in progress"

    def __init__(self, detail: str | None = None, *, retry_after: int = 1, **kw) -> None:
        headers = {"Retry-After": str(retry_after), **kw.pop("headers", {})}
        super().__init__(
            detail or "A request with this Idempotency-Key is still being processed; retry later.",
            headers=headers,
            **kw,
        )


class IdempotencyResponseUnavailable(ApplicationError):
    """The original request completed but its response was too large to store for replay."""

    status, slug, title = 409, "idempotency-response-unavailable", "Response not replayable"

    def __init__(self, detail: str | None = None, **kw) -> None:
        super().__init__(
            detail
            or "A request with this Idempotency-Key already completed; its response was too large "
            "to keep for replay, and it is not executed again.",
            **kw,
        )
