"""The answers of the asyncio `/gw` pipeline and how they go out through ASGI `send`.

A `GatewayResponse` is what every step returns: status, headers as `(str, str)` pairs in order
(repeated names stay repeated: two `Set-Cookie` are two headers), and either a buffered `body` or
a `stream` (an async iterator of chunks). Sending a stream awaits `send` for each chunk, so the
client's pace (the server's back-pressure) paces the upstream read and nothing accumulates here.

Problem answers (SPEC §2) are built from `common.errors` (the same shape as Django's answers).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from common.errors import PROBLEM_CONTENT_TYPE, ApplicationError, problem_body
from gateway.policies.base import EarlyResponse

Release = Callable[[], Awaitable[None]]


@dataclass(slots=True)
class GatewayResponse:
    status: int
    headers: list[tuple[str, str]] = field(default_factory=list)
    body: bytes | None = b""
    stream: AsyncIterator[bytes] | None = None
    # Gives the upstream connection back (idempotent); called once the answer went out or failed.
    release: Release | None = None

    def header(self, name: str) -> str | None:
        lower = name.lower()
        for key, value in self.headers:
            if key.lower() == lower:
                return value
        return None

    async def close(self) -> None:
        release, self.release = self.release, None
        if release is not None:
            await release()


def problem(
    *,
    status: int,
    slug: str,
    title: str,
    detail: str = "",
    errors: Any = None,
    extra: Any = None,
    headers: Iterable[tuple[str, str]] = (),
) -> GatewayResponse:
    body = problem_body(status=status, slug=slug, title=title, detail=detail, errors=errors, extra=extra)
    return GatewayResponse(
        status=status,
        headers=[
            ("Content-Type", PROBLEM_CONTENT_TYPE),
            ("Content-Length", str(len(body))),
            *headers,
        ],
        body=body,
    )


def error_response(error: ApplicationError) -> GatewayResponse:
    """A domain error as its problem+json answer (status, slug, title, detail, extra headers)."""
    return problem(
        status=error.status,
        slug=error.slug,
        title=error.title,
        detail=error.detail,
        errors=error.errors,
        extra=error.extra,
        headers=list(error.headers.items()),
    )


def internal_error() -> GatewayResponse:
    return problem(
        status=500,
        slug="internal-error",
        title="Internal server error",
        detail="An unexpected error occurred.",
    )


def early_response(early: EarlyResponse) -> GatewayResponse:
    """A policy's answer (429, 403, a CORS preflight 204…)."""
    if early.problem is not None:
        slug, title, detail = early.problem
        return problem(status=early.status, slug=slug, title=title, detail=detail, headers=early.headers)
    return GatewayResponse(status=early.status, headers=list(early.headers), body=early.body)


def buffered(*, status: int, headers: Iterable[tuple[str, str]], body: bytes) -> GatewayResponse:
    return GatewayResponse(status=status, headers=list(headers), body=body)


def _encoded(headers: Iterable[tuple[str, str]]) -> list[tuple[bytes, bytes]]:
    return [(name.lower().encode("latin-1"), value.encode("latin-1")) for name, value in headers]


async def response_send(send: Any, response: GatewayResponse) -> None:
    """Send `response`: the head, then the body whole or chunk by chunk (back-pressure: each
    `await send` returns once the server may take more). The upstream is released in any case."""
    try:
        headers = response.headers
        sized = response.stream is not None or response.header("content-length") is not None
        if not sized and response.status >= 200 and response.status not in (204, 304):
            headers = [*headers, ("Content-Length", str(len(response.body or b"")))]
        await send({"type": "http.response.start", "status": response.status, "headers": _encoded(headers)})
        if response.stream is None:
            await send({"type": "http.response.body", "body": response.body or b""})
            return
        async for chunk in response.stream:
            if chunk:
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
        await send({"type": "http.response.body", "body": b""})
    finally:
        await response.close()
