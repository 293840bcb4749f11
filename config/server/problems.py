"""Complete HTTP/1.1 answers for errors the server layer produces itself (SPEC §2 shape).

They are written straight to the transport before any application ran (bad framing, limits,
timeouts, over capacity), so they are built here as bytes, each with a fresh correlation id and
`Connection: close` (after such an error the connection's framing cannot be trusted).
"""

from __future__ import annotations

import http

from common.correlation import new_correlation_id
from common.errors import PROBLEM_CONTENT_TYPE, problem_body

# status → (slug, title)
_KINDS: dict[int, tuple[str, str]] = {
    400: ("bad-request", "Bad request"),
    408: ("request-timeout", "Request timeout"),
    413: ("payload-too-large", "Request body too large"),
    414: ("uri-too-long", "Request target too long"),
    431: ("request-header-fields-too-large", "Request header fields too large"),
    501: ("not-implemented", "Not implemented"),
    503: ("service-unavailable", "Service unavailable"),
}


def problem_parts(
    status: int, detail: str, *, headers: list[tuple[bytes, bytes]] | None = None
) -> tuple[list[tuple[bytes, bytes]], bytes]:
    """ASGI-style headers and body of a problem+json answer (for a response sent via send())."""
    slug, title = _KINDS.get(status, ("error", http.HTTPStatus(status).phrase))
    correlation_id = new_correlation_id()
    # No request context at this layer: a fresh correlation id, echoed in the header too.
    body = problem_body(
        status=status, slug=slug, title=title, detail=detail, correlation_id=correlation_id
    )
    all_headers = [
        (b"content-type", PROBLEM_CONTENT_TYPE.encode()),
        (b"content-length", str(len(body)).encode()),
        (b"x-correlation-id", correlation_id.encode()),
        *(headers or []),
    ]
    return all_headers, body


def problem_bytes(
    status: int,
    detail: str,
    *,
    headers: list[tuple[bytes, bytes]] | None = None,
    default_headers: list[tuple[bytes, bytes]] | None = None,
) -> bytes:
    """The whole response (status line, headers, body), closing the connection."""
    all_headers, body = problem_parts(status, detail, headers=headers)
    phrase = http.HTTPStatus(status).phrase.encode()
    lines = [b"HTTP/1.1 %d %s\r\n" % (status, phrase)]
    for name, value in [*(default_headers or []), *all_headers, (b"connection", b"close")]:
        lines.append(name + b": " + value + b"\r\n")
    lines.append(b"\r\n")
    return b"".join(lines) + body
