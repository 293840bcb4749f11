"""What can go wrong between the gateway and an upstream, as the retry rules need to tell it apart."""

from __future__ import annotations


class UpstreamError(Exception):
    """Any failure of the upstream client (never raised itself)."""


class UpstreamConnectError(UpstreamError):
    """No connection could be opened: refused, unreachable, unresolvable. Nothing was sent."""


class UpstreamStaleConnection(UpstreamError):
    """A pooled (reused) connection failed before one byte of the response arrived.

    The server closed a keep-alive connection as the request went out on it: the classic race of
    RFC 9112 §9.3.1. The request may or may not have been acted on.
    """


class UpstreamDisconnected(UpstreamError):
    """The connection was lost while sending or before the response was complete."""


class UpstreamProtocolError(UpstreamError):
    """The response (or the framing of the request body given) is not valid HTTP/1.1."""
