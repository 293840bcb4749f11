"""The client address as the gateway sees it: the peer, or X-Forwarded-For from a trusted peer.

X-Forwarded-For is believed only when the TCP peer is in FORWARDED_ALLOW_IPS (CIDR list); then
the right-most address that is not itself trusted is the client (every proxy appends, so entries
left of a trusted hop may be forged by the client).
"""

from __future__ import annotations

import ipaddress
from functools import lru_cache

from django.conf import settings

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


@lru_cache(maxsize=8)
def _networks(spec: tuple[str, ...]) -> tuple[Network, ...]:
    return tuple(ipaddress.ip_network(item.strip(), strict=False) for item in spec if item.strip())


def _trusted_spec() -> tuple[str, ...]:
    value = getattr(settings, "FORWARDED_ALLOW_IPS", ()) or ()
    if isinstance(value, str):
        value = value.split(",")
    return tuple(value)


def _parse(value: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    value = value.strip()
    if value.startswith("[") and "]" in value:  # [v6]:port
        value = value[1 : value.index("]")]
    elif value.count(":") == 1:  # v4:port
        value = value.split(":", 1)[0]
    try:
        address = ipaddress.ip_address(value)
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped:
        return address.ipv4_mapped
    return address


def _trusted(address: ipaddress.IPv4Address | ipaddress.IPv6Address, networks: tuple[Network, ...]) -> bool:
    return any(address.version == net.version and address in net for net in networks)


def client_address(*, peer: str, forwarded_for: str | None) -> str:
    """The client's address (normalised text). `peer` is the socket peer (REMOTE_ADDR)."""
    if forwarded_for is not None and len(forwarded_for) > 512:
        forwarded_for = forwarded_for[-512:]  # the right end is what is believed; keeps keys small
    return _client_address(peer, forwarded_for, _trusted_spec())


# The same few peers and chains come again and again; parsing them is most of this step's cost.
# FORWARDED_ALLOW_IPS is part of the key, so a changed setting is never answered from an
# earlier verdict; a client sending a new chain every time only turns the cache over.
@lru_cache(maxsize=4096)
def _client_address(peer: str, forwarded_for: str | None, spec: tuple[str, ...]) -> str:
    peer_address = _parse(peer or "")
    if peer_address is None:
        return peer or ""
    networks = _networks(spec)
    if not forwarded_for or not networks or not _trusted(peer_address, networks):
        return str(peer_address)
    for item in reversed(forwarded_for.split(",")):
        address = _parse(item)
        if address is None:
            break  # junk: stop believing the chain here
        if not _trusted(address, networks):
            return str(address)
        peer_address = address
    return str(peer_address)
