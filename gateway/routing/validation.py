"""The one validator of a route's fields and of a service target URL (admin, model, load_routes)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit

from gateway.models import HTTP_METHODS
from gateway.routing.patterns import _PLACEHOLDER_RE, PatternError, RoutePattern, pattern_parse


def route_config_errors(
    *,
    path: Any,
    methods: Any,
    rewrite: Any = "",
    condition: Any = None,
    auth_required: Any = True,
    required_permission: Any = "",
) -> dict[str, list[str]]:
    """The one validator of a route's pattern fields (admin, model clean and load_routes)."""
    errors: dict[str, list[str]] = {}
    pattern: RoutePattern | None = None
    try:
        pattern = pattern_parse(path)
    except PatternError as exc:
        errors.setdefault("path", []).append(str(exc))

    if not isinstance(methods, list | tuple) or not methods:
        errors.setdefault("methods", []).append("Give at least one HTTP method, as a list.")
    else:
        unknown = [m for m in methods if not isinstance(m, str) or m not in HTTP_METHODS]
        if unknown:
            errors.setdefault("methods", []).append(
                f"Unknown method(s) {unknown}; use upper case from {', '.join(HTTP_METHODS)}."
            )
        elif len(set(methods)) != len(methods):
            errors.setdefault("methods", []).append("A method is listed twice.")

    if rewrite:
        if not isinstance(rewrite, str) or not rewrite.startswith("/"):
            errors.setdefault("rewrite", []).append("A rewrite starts with '/'.")
        elif pattern is not None:
            available = set(pattern.param_names) | ({"**"} if pattern.rest else set())
            for name in _PLACEHOLDER_RE.findall(rewrite):
                if name not in available:
                    known = ", ".join(f"{{{n}}}" for n in sorted(available)) or "none"
                    errors.setdefault("rewrite", []).append(
                        f"'{{{name}}}' is not captured by the pattern (captured: {known})."
                    )
            if rewrite.count("{") != rewrite.count("}"):
                errors.setdefault("rewrite", []).append("Unbalanced braces.")

    if condition not in (None, ""):
        if not isinstance(condition, Mapping):
            errors.setdefault("condition", []).append(
                'A condition is an object, e.g. {"user_id": "{{X-User-ID}}"}.'
            )
        elif not all(isinstance(k, str) and k and isinstance(v, str) for k, v in condition.items()):
            errors.setdefault("condition", []).append("A condition maps names to strings (a flat object).")

    # A public route gets no identity at all (gateway.services.auth), so a permission or condition
    # on it would silently allow everyone: refuse the combination rather than ignore it.
    if auth_required in (False, "false"):
        ignored = [
            name
            for name, value in (("required_permission", required_permission), ("condition", condition))
            if value not in (None, "", {})
        ]
        if ignored:
            fields = " and ".join(ignored)
            errors.setdefault("auth_required", []).append(
                f"A public route (auth_required = false) identifies nobody, so its {fields} would "
                f"never be checked; remove {'them' if len(ignored) > 1 else 'it'} or require auth."
            )
    return errors


def service_target_url_errors(url: Any) -> list[str]:
    """A target is a base URL: http(s), a host, optionally a base path; no query or fragment."""
    if not isinstance(url, str) or not url:
        return ["Give a URL such as http://10.0.0.5:8080."]
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        return [f"Not a valid URL: {exc}."]
    errors = []
    if parts.scheme not in ("http", "https"):
        errors.append("Only http:// and https:// targets are supported.")
    if not parts.hostname:
        errors.append("The URL has no host.")
    if parts.query or parts.fragment or "?" in url or "#" in url:
        errors.append("A target URL takes no query string or fragment.")
    if parts.username or parts.password:
        errors.append("A target URL takes no credentials.")
    if port == 0:
        errors.append("Port 0 is not valid.")
    return errors
