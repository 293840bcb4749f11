"""Header rules of the proxy hop, both ways: pure functions, no I/O, no framework types.

The asyncio pipeline (gateway/services/pipeline.py) calls these with the ASGI scope's headers,
`(bytes, bytes)` pairs with lower-case names; `str` pairs in any case work as well. Every
function takes plain values; bytes are decoded as Latin-1 (RFC 9110 §5.5: field values are
octets, Latin-1 keeps each octet as one character) and the results are `str` pairs.

Signatures (all keyword-only):

    upstream_request_headers(
        *,
        client_headers: Iterable[tuple[str | bytes, str | bytes]],  # the client's request headers,
                                     # repeats kept (scope["headers"]); names in any case
        peer: str,                   # the address of the TCP peer (scope["client"][0])
        scheme: str,                 # "http" / "https" as this hop received the request
        host: str,                   # the Host the client sent (already checked by the server)
        identity: Identity | None,   # verified caller, or None (no identity headers)
        correlation_id: str,         # the accepted / minted correlation id
        target_host: str = "",       # Host for the upstream ("" → set per target by the proxy)
        trusted: TrustedProxies | None = None,  # None → settings.FORWARDED_ALLOW_IPS
    ) -> list[tuple[str, str]]
        # "Host" first; then the client's end-to-end headers in their order (repeats stay
        # repeated); then X-Forwarded-For/-Proto/-Host, Forwarded, X-Real-IP,
        # X-Correlation-ID and, with an identity, X-User-ID, X-Tenant-ID, X-User-Permissions.

    response_headers(*, upstream_headers: Iterable[tuple[str | bytes, str | bytes]])
        -> list[tuple[str, str]]     # the upstream's response headers minus hop-by-hop ones

    hop_by_hop_names(*, connection: Iterable[str]) -> frozenset[str]
    is_hop_by_hop(*, name: str, named: frozenset[str]) -> bool   # name: lower-case
    identity_headers(*, identity: Identity) -> list[tuple[str, str]]
    identity_value_is_safe(*, value: str) -> bool
    trusted_proxies(*, spec: Iterable[str]) -> TrustedProxies
    client_address(*, peer: str, forwarded_for: Iterable[str] | str | None,
                   trusted: TrustedProxies | None = None) -> str   # X-Real-IP, IP rules, limits

Forwarding headers (SPEC §3, issue 13 item 6). `FORWARDED_ALLOW_IPS` (CIDR list, default empty:
the gateway is the edge) names the peers whose forwarding headers are believed:
- from an untrusted peer, a client's `X-Forwarded-For`, `X-Forwarded-Proto`, `X-Forwarded-Host`,
  `Forwarded` and `X-Real-IP` are dropped and the gateway's own are sent: `X-Forwarded-For: peer`,
  `X-Forwarded-Proto: scheme`, `X-Forwarded-Host: host`, `Forwarded: for=peer;host=host;proto=scheme`
  and `X-Real-IP: peer`;
- from a trusted peer the chains are appended to (`X-Forwarded-For: <theirs>, peer`, `Forwarded:
  <theirs>, for=peer;…`), its `X-Forwarded-Proto` / `-Host` are kept (the first value) and
  `X-Real-IP` is the client address: the right-most `X-Forwarded-For` entry that is not itself a
  trusted proxy (`client_address`, the same answer IP rules and rate limits use).

Identity headers (issue 13 item 7): values are never encoded here; an identity whose values
are not safe (`identity_value_is_safe`) is refused where it is built from claims
(`gateway.services.tokens`), so what reaches an upstream is always exactly the claim.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable
from dataclasses import dataclass
from functools import lru_cache

from django.conf import settings

from gateway.types import Identity

HOP_BY_HOP = frozenset(
    {"connection", "keep-alive", "te", "trailer", "trailers", "transfer-encoding", "upgrade"}
)
USER_ID_HEADER = "X-User-ID"
TENANT_ID_HEADER = "X-Tenant-ID"
PERMISSIONS_HEADER = "X-User-Permissions"
IDENTITY_HEADERS = (USER_ID_HEADER, TENANT_ID_HEADER, PERMISSIONS_HEADER)
# Forwarding headers: a client's copy is believed only from a trusted peer.
FORWARDING_HEADERS = frozenset(
    {"x-forwarded-for", "x-forwarded-proto", "x-forwarded-host", "forwarded", "x-real-ip"}
)
# Headers the gateway sets itself; a client's copy is never forwarded as is.
REPLACED = frozenset(
    {
        "host",
        "content-length",
        "x-correlation-id",
        "expect",  # the server in front of us already answered any 100-continue
        "proxy",  # httpoxy: a `Proxy` request header must never reach a CGI-style upstream
        *FORWARDING_HEADERS,
        *(name.lower() for name in IDENTITY_HEADERS),
    }
)
# An identity value (sub, tenant_id, one permission) goes into a header as is: visible ASCII,
# without the list separator `,` and the quoted-string delimiters `"` and `\`; at most 256.
IDENTITY_VALUE_MAX = 256
_SAFE_IDENTITY_VALUE = re.compile(r"[!#-+\--\[\]-~]+")
_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")  # RFC 9110 §5.6.2 token


def _text(value: str | bytes) -> str:
    return value.decode("latin-1") if isinstance(value, bytes) else value


# --- hop-by-hop ----------------------------------------------------------------------------------


@lru_cache(maxsize=256)
def _connection_tokens(value: str) -> frozenset[str]:
    return frozenset(token.strip().lower() for token in value.split(",") if token.strip())


def hop_by_hop_names(*, connection: Iterable[str]) -> frozenset[str]:
    """The header names a message's `Connection` values name (lower-case), to drop with it."""
    names: frozenset[str] = frozenset()
    for value in connection:
        names |= _connection_tokens(value)
    return names


def is_hop_by_hop(*, name: str, named: frozenset[str]) -> bool:
    """`name` (lower-case) is per hop: RFC 9110 §7.6.1, `Proxy-*`, or named in `Connection`."""
    return name in HOP_BY_HOP or name.startswith("proxy-") or name in named


# --- identity -------------------------------------------------------------------------------------


def identity_value_is_safe(*, value: str) -> bool:
    """Whether `value` can be one identity header value (or list element) exactly as it is."""
    return len(value) <= IDENTITY_VALUE_MAX and _SAFE_IDENTITY_VALUE.fullmatch(value) is not None


def identity_headers(*, identity: Identity) -> list[tuple[str, str]]:
    """What the upstream receives for `identity` (permissions: sorted, comma-separated).

    The values are the identity's own: `gateway.services.tokens` refuses (401) a token whose
    `sub`, `tenant_id` or permissions are not `identity_value_is_safe`.
    """
    return [
        (USER_ID_HEADER, identity.user_id),
        (TENANT_ID_HEADER, identity.tenant_id),
        (PERMISSIONS_HEADER, ",".join(sorted(identity.permissions))),
    ]


# --- trusted proxies ------------------------------------------------------------------------------

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass(frozen=True, slots=True, eq=False)
class TrustedProxies:
    """Peers whose forwarding headers are believed (`FORWARDED_ALLOW_IPS`). Compared and hashed
    by identity: it keys per-request caches, and one spec always parses to the same object
    (`_trusted_from`), so hashing its networks on every request would be wasted."""

    networks: tuple[Network, ...] = ()
    everyone: bool = False  # "*": every peer (only behind a proxy that rewrites these headers)

    def __contains__(self, address: str) -> bool:
        if self.everyone:
            return True
        if not self.networks:
            return False
        return _in_networks(self, address)


@lru_cache(maxsize=4096)
def _in_networks(trusted: TrustedProxies, address: str) -> bool:
    """Whether `address` is in one of `trusted`'s networks (cached: asked for every request)."""
    try:
        ip = ipaddress.ip_address(address.strip().strip("[]"))
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return any(ip in network for network in trusted.networks)


def trusted_proxies(*, spec: Iterable[str]) -> TrustedProxies:
    """Parse a CIDR list (`10.0.0.0/8`, `192.0.2.1`, `::1`, or `*`); raises ValueError."""
    networks: list[Network] = []
    for item in spec:
        item = item.strip()
        if not item:
            continue
        if item == "*":
            return TrustedProxies(everyone=True)
        networks.append(ipaddress.ip_network(item, strict=False))
    return TrustedProxies(networks=tuple(networks))


@lru_cache(maxsize=8)
def _trusted_from(spec: tuple[str, ...]) -> TrustedProxies:
    return trusted_proxies(spec=spec)


def configured_trusted_proxies() -> TrustedProxies:
    """`settings.FORWARDED_ALLOW_IPS` parsed (a list or a comma-separated string), cached."""
    spec = getattr(settings, "FORWARDED_ALLOW_IPS", ())
    if isinstance(spec, str):
        spec = spec.split(",")
    return _trusted_from(tuple(spec))


UNKNOWN_CLIENT = "unknown"  # matches no IP rule; its own rate-limit bucket


def client_address(
    *, peer: str, forwarded_for: Iterable[str] | str | None, trusted: TrustedProxies | None = None
) -> str:
    """The client as the gateway sees it, one answer for X-Real-IP, IP rules and rate limits:
    the peer, or, when the peer is a trusted proxy, the right-most `X-Forwarded-For` entry that
    is not a trusted proxy itself. An entry that is not an address, reached through trusted hops
    only, was written by one of them: the answer is "unknown". Addresses come back
    normalised (no port or brackets, IPv4-mapped IPv6 as IPv4); `trusted` None →
    `FORWARDED_ALLOW_IPS`."""
    if forwarded_for is not None and not isinstance(forwarded_for, str):
        forwarded_for = ", ".join(forwarded_for)
    if forwarded_for and len(forwarded_for) > 512:
        forwarded_for = forwarded_for[-512:]  # the right end is what is believed; keeps keys small
    return _client_address(
        peer, forwarded_for or None, configured_trusted_proxies() if trusted is None else trusted
    )


# The same few peers and chains come again and again; parsing them is most of this step's cost.
# The trusted set is part of the key, so a changed FORWARDED_ALLOW_IPS is never answered from an
# earlier verdict; a client sending a new chain every time only turns the cache over.
@lru_cache(maxsize=4096)
def _client_address(peer: str, forwarded_for: str | None, trusted: TrustedProxies) -> str:
    believed = _address(peer or "")
    if believed is None and not (trusted.everyone and forwarded_for):
        return peer or ""  # not an address (a unix socket): nothing to walk from
    if not forwarded_for or (believed is not None and believed not in trusted):
        return believed or ""
    for item in reversed(forwarded_for.split(",")):
        address = _address(item)
        if address is None:
            # a trusted hop wrote something that is not an address ("unknown"): the client is
            # not known, and must not be taken for that proxy (allow lists, its limit bucket)
            return UNKNOWN_CLIENT
        if address not in trusted:
            return address
        believed = address
    return believed or ""


def _address(value: str) -> str | None:
    """`value` as a normalised address (`[v6]:port`, `v4:port`, IPv4-mapped v6 accepted), or None."""
    value = value.strip()
    if value.startswith("[") and "]" in value:
        value = value[1 : value.index("]")]
    elif value.count(":") == 1:
        value = value.split(":", 1)[0]
    try:
        address = ipaddress.ip_address(value)
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return str(address.ipv4_mapped)
    return str(address)


def _forwarded_value(value: str) -> str:
    """A Forwarded parameter value (RFC 7239 §4): a token, else a quoted-string."""
    if _TOKEN.fullmatch(value):
        return value
    escaped = value.replace("\\", "\\\\").replace('"', '\\"')
    return f'"{escaped}"'


@lru_cache(maxsize=4096)
def _forwarded_node(address: str) -> str:
    try:
        ip = ipaddress.ip_address(address.strip("[]"))
    except ValueError:
        return _forwarded_value(address or "unknown")
    if isinstance(ip, ipaddress.IPv6Address):
        return f'"[{ip}]"'
    return str(ip)


def forwarded_element(*, peer: str, host: str, scheme: str) -> str:
    """This hop's `Forwarded` element (RFC 7239): `for=…;host=…;proto=…`."""
    parts = [f"for={_forwarded_node(peer)}"]
    if host:
        parts.append(f"host={_forwarded_value(host)}")
    parts.append(f"proto={_forwarded_value(scheme or 'http')}")
    return ";".join(parts)


# --- request: client → upstream ---------------------------------------------------------------


def upstream_request_headers(
    *,
    client_headers: Iterable[tuple[str | bytes, str | bytes]],
    peer: str,
    scheme: str,
    host: str,
    identity: Identity | None,
    correlation_id: str,
    target_host: str = "",
    trusted: TrustedProxies | None = None,
) -> list[tuple[str, str]]:
    """The headers to send upstream (see the module docstring for what is kept and set)."""
    pairs = [(_text(name), _text(value)) for name, value in client_headers]
    named = hop_by_hop_names(connection=(v for n, v in pairs if n.lower() == "connection"))
    trusted = configured_trusted_proxies() if trusted is None else trusted
    out: list[tuple[str, str]] = [("Host", target_host)]
    seen: dict[str, list[str]] = {}
    for name, value in pairs:
        lower = name.lower()
        if lower in FORWARDING_HEADERS:
            seen.setdefault(lower, []).append(value)
            continue
        if lower in REPLACED or is_hop_by_hop(name=lower, named=named):
            continue
        out.append((name, value))
    if peer in trusted:
        chain = ", ".join(seen.get("x-forwarded-for", ()))
        forwarded_for = f"{chain}, {peer}" if chain and peer else chain or peer
        proto = _first(seen.get("x-forwarded-proto")) or scheme
        forwarded_host = _first(seen.get("x-forwarded-host")) or host
        real_ip = client_address(peer=peer, forwarded_for=seen.get("x-forwarded-for"), trusted=trusted)
        earlier = ", ".join(seen.get("forwarded", ()))
    else:
        forwarded_for, proto, forwarded_host, real_ip, earlier = peer, scheme, host, peer, ""
    element = forwarded_element(peer=peer, host=host, scheme=scheme)
    out += [
        ("X-Forwarded-For", forwarded_for),
        ("X-Forwarded-Proto", proto),
        ("X-Forwarded-Host", forwarded_host),
        ("Forwarded", f"{earlier}, {element}" if earlier else element),
        ("X-Real-IP", real_ip),
        ("X-Correlation-ID", correlation_id),
    ]
    if identity is not None:
        out += identity_headers(identity=identity)
    return out


def _first(values: list[str] | None) -> str:
    if not values:
        return ""
    return values[0].split(",")[0].strip()


# --- response: upstream → client --------------------------------------------------------------


def response_headers(*, upstream_headers: Iterable[tuple[str | bytes, str | bytes]]) -> list[tuple[str, str]]:
    """The upstream's response headers minus hop-by-hop ones; repeated headers stay repeated."""
    pairs = [(_text(name), _text(value)) for name, value in upstream_headers]
    named = hop_by_hop_names(connection=(v for n, v in pairs if n.lower() == "connection"))
    return [(name, value) for name, value in pairs if not is_hop_by_hop(name=name.lower(), named=named)]
