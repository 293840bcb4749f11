"""The client address as the gateway sees it: the peer, or X-Forwarded-For from a trusted peer.

X-Forwarded-For is believed only when the TCP peer is in FORWARDED_ALLOW_IPS (CIDR list, or
`*`); then the right-most address that is not itself trusted is the client (every proxy appends,
so entries left of a trusted hop may be forged by the client). One implementation serves the
policies and the X-Real-IP sent upstream: `gateway.services.headers.client_address`.
"""

from __future__ import annotations

from gateway.services.headers import client_address

__all__ = ["client_address"]
