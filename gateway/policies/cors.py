"""`x-cors`: preflights answered by the gateway, allow-origin on actual requests (Fetch standard)."""

from __future__ import annotations

from typing import Any

from gateway.models import HTTP_METHODS
from gateway.policies.base import (
    Compiled,
    EarlyResponse,
    PolicyKind,
    PolicyRequest,
    PolicyState,
    is_str_list,
    unknown_keys,
)

KEYS = ("origins", "methods", "headers", "expose_headers", "credentials", "max_age")
_REFUSED = EarlyResponse(
    status=403,
    headers=(("Vary", "Origin"),),
    problem=("cors-refused", "Forbidden", "This origin may not call this route cross-origin."),
)


class _Cors(Compiled):
    phases = ("preflight", "response")

    def __init__(self, config: dict[str, Any]) -> None:
        origins = config.get("origins", [])
        self.any_origin = "*" in origins
        self.origins = frozenset(origins)
        self.credentials = bool(config.get("credentials", False))
        self.methods = tuple(config.get("methods") or ("GET", "HEAD", "POST"))
        self.method_set = frozenset(self.methods)
        headers = config.get("headers") or []
        self.any_header = "*" in headers
        self.headers = frozenset(h.lower() for h in headers)
        self.allow_headers = ", ".join(headers)
        self.expose = ", ".join(config.get("expose_headers") or [])
        self.max_age = str(config.get("max_age", 600))

    def _allow_origin(self, origin: str | None) -> str | None:
        if not origin:
            return None
        if origin in self.origins:
            return origin
        if self.any_origin:
            return "*"  # validation refuses "*" with credentials
        return None

    def preflight(self, request: PolicyRequest, state: PolicyState) -> EarlyResponse | None:
        if request.method != "OPTIONS":
            return None
        wanted = request.header("Access-Control-Request-Method")
        if wanted is None:
            return None
        allowed = self._allow_origin(request.header("Origin"))
        if allowed is None or wanted not in self.method_set:
            return _REFUSED
        asked = [
            h.strip()
            for h in (request.header("Access-Control-Request-Headers") or "").split(",")
            if h.strip()
        ]
        if not self.any_header and any(h.lower() not in self.headers for h in asked):
            return _REFUSED
        headers = [
            ("Access-Control-Allow-Origin", allowed),
            ("Access-Control-Allow-Methods", ", ".join(self.methods)),
            ("Access-Control-Max-Age", self.max_age),
            ("Vary", "Origin"),
        ]
        if asked:
            headers.append(
                ("Access-Control-Allow-Headers", ", ".join(asked) if self.any_header else self.allow_headers)
            )
        if self.credentials:
            headers.append(("Access-Control-Allow-Credentials", "true"))
        return EarlyResponse(status=204, headers=tuple(headers))

    def response(self, request: PolicyRequest, headers: list[tuple[str, str]]) -> list[tuple[str, str]]:
        if request.method == "OPTIONS" and request.header("Access-Control-Request-Method") is not None:
            return headers  # a preflight's answer (ours, 204 or 403) is complete
        headers.append(("Vary", "Origin"))
        allowed = self._allow_origin(request.header("Origin"))
        if allowed is None:
            return headers
        headers.append(("Access-Control-Allow-Origin", allowed))
        if self.credentials:
            headers.append(("Access-Control-Allow-Credentials", "true"))
        if self.expose:
            headers.append(("Access-Control-Expose-Headers", self.expose))
        return headers


class Cors(PolicyKind):
    name, file_key = "cors", "x-cors"

    def validate(self, config: Any) -> list[str]:
        if not isinstance(config, dict):
            return ['an object, e.g. {"origins": ["https://app.example"], "methods": ["GET"]}']
        errors = unknown_keys(config, KEYS)
        origins = config.get("origins")
        if not is_str_list(origins) or not origins:
            errors.append('origins: a non-empty list, e.g. ["https://app.example"] or ["*"]')
        else:
            for origin in origins:
                if origin != "*" and ("://" not in origin or origin.endswith("/") or origin.count("/") > 2):
                    errors.append(f"origins: {origin!r} is not an origin (scheme://host[:port], no path)")
        if "methods" in config and (
            not is_str_list(config["methods"]) or any(m not in HTTP_METHODS for m in config["methods"])
        ):
            errors.append(f"methods: a list of {', '.join(HTTP_METHODS)}")
        for key in ("headers", "expose_headers"):
            if key in config and not is_str_list(config[key]):
                errors.append(f"{key}: a list of header names")
        credentials = config.get("credentials", False)
        if not isinstance(credentials, bool):
            errors.append("credentials: true or false")
        elif credentials and is_str_list(origins) and "*" in origins:
            errors.append('credentials: not with origin "*" — list the origins explicitly')
        max_age = config.get("max_age", 600)
        if not isinstance(max_age, int) or isinstance(max_age, bool) or not 0 <= max_age <= 86_400:
            errors.append("max_age: seconds, 0 to 86400")
        return errors

    def compile(self, config: Any) -> Compiled:
        return _Cors(config)
