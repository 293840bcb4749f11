"""What the gateway's shared response cache may serve and store (RFC 9111): pure functions.

No I/O and no framework types: the pipeline passes the ASGI scope's header pairs.
Headers are iterables of `(name, value)` pairs, `str` or `bytes` (Latin-1), names in any case,
repeats allowed. `shared` is True for a route without auth (one entry for every client) and
False for an auth route (entries scoped per user, tenant and permissions).

    cache_lookup_allowed(*, request_headers, shared: bool) -> bool
    response_storable(*, request_headers, shared: bool, status: int, response_headers,
                      body_size: int, max_bytes: int) -> bool
    vary_names(*, response_headers) -> tuple[str, ...] | None      # None: `Vary: *`
    vary_digest(*, request_headers, names: tuple[str, ...]) -> str  # the secondary key

The rules:
- A request carrying a (non-empty) `Cookie` is neither served from nor stored into the cache:
  its answer may depend on a session the gateway cannot see (the safest reading of §3.5).
- On a shared route a request carrying `Authorization` is not served from the cache (the
  upstream decides what it shows to that caller), and its answer is stored only when the
  response says `public`, `s-maxage` or `must-revalidate` (RFC 9111 §3.5). On an auth route the
  token is the gateway's own business and the entry is per identity.
- Request `Cache-Control: no-store` → not stored (§5.2.1.5); `no-cache` (or `Pragma: no-cache`
  without Cache-Control) → not served from the cache (§5.2.1.4), the fresh answer may be stored.
- Never stored: a status other than 200, `Cache-Control: no-store`, `private`, `no-cache`
  (qualified forms too), `Set-Cookie`, `Vary: *`, a body above `max_bytes`.
- `Vary`: the request's values of the named headers are part of the key (secondary key,
  `vary_digest`); an answer with a `Content-Encoding` varies on `Accept-Encoding` even when the
  upstream forgot to say so, so a gzip copy never reaches a client that did not ask for it.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable

HeaderPairs = Iterable[tuple[str | bytes, str | bytes]]

_NEVER_STORED = frozenset({"no-store", "private", "no-cache"})
_SHAREABLE_WITH_AUTHORIZATION = frozenset({"public", "s-maxage", "must-revalidate"})


def _folded(headers: HeaderPairs) -> dict[str, str]:
    """lower-case name → values joined with ", " (RFC 9110 §5.3)."""
    folded: dict[str, str] = {}
    for name, value in headers:
        name = name.decode("latin-1") if isinstance(name, bytes) else name
        value = value.decode("latin-1") if isinstance(value, bytes) else value
        lower = name.lower()
        folded[lower] = f"{folded[lower]}, {value}" if lower in folded else value
    for credential in ("cookie", "authorization"):  # an empty one carries nothing
        if credential in folded and not folded[credential].strip(" \t,"):
            del folded[credential]
    return folded


def _directives(value: str | None) -> frozenset[str]:
    """Cache-Control directive names (`private="Set-Cookie"` → `private`), lower-case."""
    if not value:
        return frozenset()
    names = set()
    for part in value.split(","):
        name = part.split("=", 1)[0].strip().lower()
        if name:
            names.add(name)
    return frozenset(names)


def cache_lookup_allowed(*, request_headers: HeaderPairs, shared: bool) -> bool:
    """Whether this request may be answered from the cache."""
    request = _folded(request_headers)
    if "cookie" in request:
        return False
    if shared and "authorization" in request:
        return False
    if "cache-control" in request:
        return "no-cache" not in _directives(request["cache-control"])
    return "no-cache" not in _directives(request.get("pragma"))


def response_storable(
    *,
    request_headers: HeaderPairs,
    shared: bool,
    status: int,
    response_headers: HeaderPairs,
    body_size: int,
    max_bytes: int,
) -> bool:
    """Whether the answer to this request may be stored."""
    if status != 200 or body_size > max_bytes:
        return False
    request = _folded(request_headers)
    if "cookie" in request or "no-store" in _directives(request.get("cache-control")):
        return False
    response = _folded(response_headers)
    directives = _directives(response.get("cache-control"))
    if directives & _NEVER_STORED or "set-cookie" in response:
        return False
    if vary_names(response_headers=response.items()) is None:
        return False
    # RFC 9111 §3.5: an answer to a request with credentials is shared only when it says so.
    return not shared or "authorization" not in request or bool(directives & _SHAREABLE_WITH_AUTHORIZATION)


def vary_names(*, response_headers: HeaderPairs) -> tuple[str, ...] | None:
    """The request headers the response varies on (sorted, lower-case); None for `Vary: *`."""
    response = _folded(response_headers)
    names = {name.strip().lower() for name in response.get("vary", "").split(",") if name.strip()}
    if "*" in names:
        return None
    encoding = response.get("content-encoding", "").strip().lower()
    if encoding and encoding != "identity":
        names.add("accept-encoding")
    return tuple(sorted(names))


def vary_digest(*, request_headers: HeaderPairs, names: tuple[str, ...]) -> str:
    """A digest of the request's values for `names` (an absent header differs from an empty one)."""
    request = _folded(request_headers)
    parts = []
    for name in names:
        value = request.get(name)
        parts.append(f"{name}\x00-" if value is None else f"{name}\x00+{value}")
    return hashlib.sha256("\x00\x00".join(parts).encode("utf-8", "surrogatepass")).hexdigest()[:32]
