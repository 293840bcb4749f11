"""DRF authentication: end-user Bearer JWTs (shared with the gateway) and the internal shared secret."""

from __future__ import annotations

import hmac
from dataclasses import dataclass
from typing import Any

from django.conf import settings
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


@dataclass(frozen=True)
class InternalCaller:
    """The token service (or another trusted internal system) calling `/internal/...`."""

    name: str = "internal"

    @property
    def is_authenticated(self) -> bool:
        return True


class InternalTokenAuthentication(BaseAuthentication):
    """`Authorization: Bearer <GATEWAY_INTERNAL_TOKEN>`; unset secret → nobody gets in."""

    def authenticate(self, request: Request) -> tuple[Any, Any] | None:
        expected = settings.GATEWAY_INTERNAL_TOKEN
        scheme, _, presented = request.META.get("HTTP_AUTHORIZATION", "").partition(" ")
        if not expected or scheme.lower() != "bearer" or not presented:
            raise NotAuthenticated("Internal endpoints need the internal bearer token.", error=None)
        if not hmac.compare_digest(presented.strip().encode(), expected.encode()):
            raise NotAuthenticated("The internal bearer token is wrong.")
        return InternalCaller(), None

    def authenticate_header(self, request: Request) -> str:
        return "Bearer"


__all__ = ["BearerTokenAuthentication", "InternalTokenAuthentication", "NotAuthenticated"]
