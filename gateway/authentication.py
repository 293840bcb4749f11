"""DRF authentication for the project's own APIs, sharing the gateway's token verification."""

from __future__ import annotations

from typing import Any

from rest_framework.authentication import BaseAuthentication
from rest_framework.request import Request

from common.errors import NotAuthenticated


class BearerTokenAuthentication(BaseAuthentication):
    """`Authorization: Bearer <JWT>` verified exactly as the gateway verifies it."""

    def authenticate(self, request: Request) -> tuple[Any, Any] | None:
        header = request.META.get("HTTP_AUTHORIZATION", "")
        if not header:
            return None  # IsAuthenticated then answers 401 with the challenge below
        from gateway.services.tokens import token_authenticate

        identity = token_authenticate(authorization=header)
        return identity, identity

    def authenticate_header(self, request: Request) -> str:
        return "Bearer"


__all__ = ["BearerTokenAuthentication", "NotAuthenticated"]
