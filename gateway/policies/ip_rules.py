"""`x-ip-allow` / `x-ip-deny`: CIDR lists (IPv4 and IPv6); a refused client → 403 before auth."""

from __future__ import annotations

import ipaddress
from typing import Any

from gateway.policies.base import Compiled, EarlyResponse, PolicyKind, PolicyRequest, PolicyState

_DENIED = EarlyResponse(
    status=403,
    problem=("ip-denied", "Forbidden", "Requests from this address are not allowed on this route."),
)


def _cidr_errors(config: Any) -> list[str]:
    if not isinstance(config, list) or not config:
        return ['a non-empty list of CIDR blocks, e.g. ["10.0.0.0/8", "2001:db8::/32"]']
    errors = []
    for item in config:
        try:
            ipaddress.ip_network(item, strict=False)
        except (TypeError, ValueError):
            errors.append(f"{item!r} is not an IPv4 or IPv6 address or CIDR block")
    return errors


class _IpRule(Compiled):
    phases = ("ip",)

    def __init__(self, networks: list[str], *, allow: bool) -> None:
        self.networks = tuple(ipaddress.ip_network(item, strict=False) for item in networks)
        self.allow = allow

    def _inside(self, client_ip: str) -> bool:
        try:
            address = ipaddress.ip_address(client_ip)
        except ValueError:
            return False
        return any(address.version == net.version and address in net for net in self.networks)

    def ip(self, request: PolicyRequest, state: PolicyState) -> EarlyResponse | None:
        inside = self._inside(request.client_ip)
        return None if inside == self.allow else _DENIED


class IpAllow(PolicyKind):
    name, file_key = "ip_allow", "x-ip-allow"

    def validate(self, config: Any) -> list[str]:
        return _cidr_errors(config)

    def compile(self, config: Any) -> Compiled:
        return _IpRule(config, allow=True)


class IpDeny(PolicyKind):
    name, file_key = "ip_deny", "x-ip-deny"

    def validate(self, config: Any) -> list[str]:
        return _cidr_errors(config)

    def compile(self, config: Any) -> Compiled:
        return _IpRule(config, allow=False)
