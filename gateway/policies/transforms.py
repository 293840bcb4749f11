"""`x-request-headers` / `x-response-headers`: `{"set": {...}, "remove": [...]}`.

Identity headers (set only by the gateway from a verified token) and hop-by-hop headers can never
be set or removed this way: validation refuses them.
"""

from __future__ import annotations

import re
from typing import Any

from gateway.policies.base import Compiled, PolicyKind, PolicyRequest, is_str_list, unknown_keys

PROTECTED = frozenset(
    {
        "x-user-id",
        "x-tenant-id",
        "x-user-permissions",
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "host",
        "content-length",
    }
)
# What the gateway itself writes to say who the client is and which request this is
# (docs/gateway-proxy.md "Proxying"): a transform that set or removed them would let a route's
# config tell the upstream another client address, scheme, host, request id or trace.
GATEWAY_OWNED = frozenset(
    {
        "x-forwarded-for",
        "x-forwarded-proto",
        "x-forwarded-host",
        "forwarded",
        "x-real-ip",
        "x-correlation-id",
        "traceparent",
    }
)
_TOKEN = re.compile(r"^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$")
_VALUE = re.compile(r"^[\t\x20-\x7e\x80-\xff]*$")


def _name_errors(name: Any) -> list[str]:
    if not isinstance(name, str) or not _TOKEN.match(name):
        return [f"{name!r} is not a header name"]
    if name.lower() in PROTECTED or name.lower().startswith("proxy-"):
        return [f"{name} is an identity or hop-by-hop header; it cannot be set or removed"]
    if name.lower() in GATEWAY_OWNED:
        return [f"{name} is written by the gateway (client address, request id, trace); it cannot be changed"]
    return []


class _Transform(Compiled):
    def __init__(self, config: dict[str, Any]) -> None:
        self.set = tuple((name, value) for name, value in (config.get("set") or {}).items())
        self.drop = frozenset(name.lower() for name in (config.get("remove") or [])) | frozenset(
            name.lower() for name, _ in self.set
        )

    def apply(self, headers: list[tuple[str, str]]) -> list[tuple[str, str]]:
        kept = [(name, value) for name, value in headers if name.lower() not in self.drop]
        kept.extend(self.set)
        return kept


class _RequestTransform(_Transform):
    phases = ("upstream",)

    def upstream(self, request: PolicyRequest, headers: list[tuple[str, str]]) -> list[tuple[str, str]]:
        return self.apply(headers)


class _ResponseTransform(_Transform):
    phases = ("response",)

    def response(self, request: PolicyRequest, headers: list[tuple[str, str]]) -> list[tuple[str, str]]:
        return self.apply(headers)


class _HeadersKind(PolicyKind):
    def validate(self, config: Any) -> list[str]:
        if not isinstance(config, dict):
            return ['an object {"set": {"Name": "value"}, "remove": ["Name"]}']
        errors = unknown_keys(config, ("set", "remove"))
        to_set = config.get("set", {})
        if not isinstance(to_set, dict):
            errors.append("set: an object of header name → value")
        else:
            for name, value in to_set.items():
                errors.extend(f"set: {e}" for e in _name_errors(name))
                if not isinstance(value, str) or not _VALUE.match(value):
                    errors.append(f"set: {name}: the value must be a string without control characters")
        remove = config.get("remove", [])
        if not is_str_list(remove) and remove != []:
            errors.append("remove: a list of header names")
        else:
            for name in remove:
                errors.extend(f"remove: {e}" for e in _name_errors(name))
        return errors


class RequestHeaders(_HeadersKind):
    name, file_key = "request_headers", "x-request-headers"

    def compile(self, config: Any) -> Compiled:
        return _RequestTransform(config)


class ResponseHeaders(_HeadersKind):
    name, file_key = "response_headers", "x-response-headers"

    def compile(self, config: Any) -> Compiled:
        return _ResponseTransform(config)
