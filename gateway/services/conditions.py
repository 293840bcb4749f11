"""Route `condition`: `{"user_id": "{{X-User-ID}}"}` — every key names a path parameter (else a
query parameter) whose value must equal the template rendered over the identity headers.

Anything that cannot be decided is a refusal: a key in neither path nor query, a template naming
an unknown header, a repeated query parameter whose values disagree.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

from common.errors import PermissionDenied

_PLACEHOLDER = re.compile(r"\{\{\s*([A-Za-z0-9_-]+)\s*\}\}")


class _UnknownPlaceholder(Exception):
    pass


def condition_render(*, template: str, identity_headers: Mapping[str, str]) -> str:
    """`template` with each `{{Header-Name}}` replaced (header names are case-insensitive)."""
    headers = {name.lower(): value for name, value in identity_headers.items()}

    def substitute(match: re.Match[str]) -> str:
        value = headers.get(match.group(1).lower())
        if value is None:
            raise _UnknownPlaceholder(match.group(1))
        return value

    return _PLACEHOLDER.sub(substitute, template)


def condition_check(
    *,
    condition: Mapping[str, object],
    path_params: Mapping[str, str],
    query: Mapping[str, list[str]],
    identity_headers: Mapping[str, str],
) -> None:
    """Raise PermissionDenied (403) unless every condition holds."""
    for name, template in condition.items():
        if not isinstance(template, str):
            raise PermissionDenied("This route's access condition cannot be evaluated.")
        try:
            expected = condition_render(template=template, identity_headers=identity_headers)
        except _UnknownPlaceholder:
            raise PermissionDenied("This route's access condition cannot be evaluated.") from None
        if name in path_params:
            actual = [path_params[name]]
        elif query.get(name):
            actual = list(query[name])
        else:
            raise PermissionDenied(f"The request does not carry {name!r}, which access requires.")
        if any(value != expected for value in actual):
            raise PermissionDenied(f"Access to this {name!r} is not allowed.")
