"""Reading a whole request body from ASGI `receive` with a limit, for apps that need it whole.

Used in front of the sync Django part (and the temporary WSGI gateway): Django's WSGI request
reads `CONTENT_LENGTH` bytes, so a chunked body was read as empty (issue 13 item 9). Buffered
here, the body reaches Django with a Content-Length. A client that goes away before the body is
complete (a truncated Content-Length body, an aborted chunked one, a body timeout) makes
`receive()` return `http.disconnect`: then the app is not called at all.
"""

from __future__ import annotations

from typing import Any


class BodyTooLarge(Exception):
    pass


def body_expected(scope: dict[str, Any]) -> bool:
    for name, value in scope["headers"]:
        if name == b"transfer-encoding" or (name == b"content-length" and value.strip() != b"0"):
            return True
    return False


async def read_body(scope: dict[str, Any], receive: Any, *, limit: int) -> bytes | None:
    """The whole body, or None when the client went away first. Over `limit` → BodyTooLarge."""
    declared = None
    for name, value in scope["headers"]:
        if name == b"content-length":
            declared = int(value)  # the HTTP parser accepted it: digits only, one value
    if declared is not None and declared > limit:
        raise BodyTooLarge
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] != "http.request":
            return None
        chunk = message.get("body", b"")
        if chunk:
            size += len(chunk)
            if size > limit:
                raise BodyTooLarge
            chunks.append(chunk)
        if not message.get("more_body", False):
            break
    if declared is not None and size != declared:
        return None
    return b"".join(chunks)


def with_content_length(scope: dict[str, Any], length: int) -> dict[str, Any]:
    """The scope with the body framing of a buffered body: Content-Length, no Transfer-Encoding."""
    headers = [
        (name, value)
        for name, value in scope["headers"]
        if name not in (b"content-length", b"transfer-encoding")
    ]
    headers.append((b"content-length", str(length).encode()))
    return {**scope, "headers": headers}


def replay(body: bytes, receive: Any) -> Any:
    """A `receive` that hands out the buffered body once, then the client's next event."""
    sent = False

    async def _receive() -> dict[str, Any]:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return _receive
