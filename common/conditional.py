"""ETag / Last-Modified on the project's own GET APIs, and 304 to conditional requests (RFC 9110 §13).

The ETag hashes the representation together with its owner, so equal bodies of two users never
share a tag and a tag reveals nothing of the data; responses say `Vary: Authorization` and
`Cache-Control: private` so no shared cache hands one user's answer to another.
"""

from __future__ import annotations

import hashlib
import json
from datetime import datetime
from typing import Any

from django.utils.http import http_date, parse_etags, parse_http_date_safe
from rest_framework import status
from rest_framework.request import Request
from rest_framework.response import Response


def representation_etag(*, data: Any, owner: tuple[str, ...]) -> str:
    payload = json.dumps([list(owner), data], sort_keys=True, separators=(",", ":"), default=str)
    return '"' + hashlib.sha256(payload.encode()).hexdigest()[:32] + '"'


def conditional_response(
    request: Request, *, data: Any, owner: tuple[str, ...], last_modified: datetime | None = None
) -> Response:
    """200 with validators, or 304 when the client's copy is current.

    If-None-Match wins over If-Modified-Since (RFC 9110 §13.1.3); ETags compare weakly for GET.
    """
    etag = representation_etag(data=data, owner=owner)
    headers = {"ETag": etag, "Vary": "Authorization", "Cache-Control": "private, no-cache"}
    if last_modified is not None:
        headers["Last-Modified"] = http_date(last_modified.timestamp())
    if_none_match = request.headers.get("If-None-Match")
    if if_none_match is not None:
        tags = {tag.removeprefix("W/") for tag in parse_etags(if_none_match)}
        if "*" in tags or etag in tags:
            return Response(status=status.HTTP_304_NOT_MODIFIED, headers=headers)
    elif last_modified is not None:
        since = parse_http_date_safe(request.headers.get("If-Modified-Since", ""))
        if since is not None and int(last_modified.timestamp()) <= since:
            return Response(status=status.HTTP_304_NOT_MODIFIED, headers=headers)
    return Response(data, headers=headers)
