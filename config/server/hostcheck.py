"""The Host check every request passes before any app sees it, `/gw` included (issue 13 item 3).

The same rule as Django's `ALLOWED_HOSTS` (`validate_host`, with Django's DEBUG fallback for an
empty list), plus what Django lets through: a port that is not 1–65535, more than one `Host`
header, and a missing `Host` on HTTP/1.1 (RFC 9112 §3.2: 400). An absolute-form request target
has already replaced `Host` by its authority (protocol.py).
"""

from __future__ import annotations

from functools import cache, lru_cache
from typing import Any

from django.http.request import split_domain_port, validate_host


@cache
def _allowed_hosts() -> tuple[str, ...]:
    from django.conf import settings

    allowed = list(settings.ALLOWED_HOSTS)
    if settings.DEBUG and not allowed:
        allowed = [".localhost", "127.0.0.1", "[::1]"]
    return tuple(allowed)


def host_problem(scope: dict[str, Any]) -> str | None:
    """Why this request's Host is refused, or None when it is fine."""
    hosts = [value for name, value in scope["headers"] if name == b"host"]
    if not hosts:
        if scope.get("http_version") == "1.0":
            return None  # HTTP/1.0 may omit it; Django falls back to the server's own name
        return "An HTTP/1.1 request must carry a Host header."
    if len(hosts) > 1:
        return "More than one Host header."
    return _single_host_problem(hosts[0])


@lru_cache(maxsize=1024)
def _single_host_problem(value: bytes) -> str | None:
    """The verdict on one Host value (cached: every request asks, with few distinct values)."""
    try:
        host = value.decode("ascii")
    except UnicodeDecodeError:
        return "The Host header is not ASCII."
    domain, port = split_domain_port(host)
    if not domain:
        return "The Host header is not a valid host[:port]."
    if port and not (port.isdigit() and 0 < int(port) <= 65535):
        return "The Host header has an invalid port."
    if not validate_host(domain, list(_allowed_hosts())):
        return f"The host {domain!r} is not served here (ALLOWED_HOSTS)."
    return None
