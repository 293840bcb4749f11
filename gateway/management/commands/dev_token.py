"""`manage.py dev_token [--sub u1] [--tenant t1] [--permission P …] [--ttl SECONDS]`: a Bearer token
signed with the development key (embedded mode, JWT_JWKS_URL unset). Refused with JWT_JWKS_URL set."""

from __future__ import annotations

import time
import uuid

import jwt
from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from common.command_args import positive_int
from gateway.services.dev_key import DEV_KEY_ALGORITHM, DevKeyRefused, dev_key_ensure


class Command(BaseCommand):
    help = "Print a Bearer token the project accepts in embedded mode (signed with the development key)."

    def add_arguments(self, parser) -> None:  # noqa: ANN001
        parser.add_argument("--sub", default="u1", help="the user id (default u1)")
        parser.add_argument("--tenant", default="t1", help="the tenant id (default t1)")
        parser.add_argument(
            "--permission",
            action="append",
            default=None,
            help="a permission (repeat for several); without any, permissions come from RBAC",
        )
        parser.add_argument(
            "--ttl", type=positive_int, default=3600, help="lifetime in seconds (default 3600)"
        )

    def handle(  # noqa: ANN002, ANN003
        self, *args, sub: str, tenant: str, permission: list[str] | None, ttl: int, **options
    ) -> None:
        if not sub.strip():
            raise CommandError("--sub must not be empty")
        if ttl <= 0 or ttl > settings.JWT_MAX_TOKEN_LIFETIME_SECONDS:
            raise CommandError(
                f"--ttl must be between 1 and {settings.JWT_MAX_TOKEN_LIFETIME_SECONDS} seconds"
            )
        try:
            private_key, kid = dev_key_ensure()
        except DevKeyRefused as exc:
            raise CommandError(f"dev_token refused: {exc}") from exc
        now = int(time.time())
        claims: dict = {
            "sub": sub,
            "tenant_id": tenant,
            "jti": uuid.uuid4().hex,
            "iat": now,
            "exp": now + ttl,
        }
        if permission is not None:
            claims["permissions"] = list(permission)
        if settings.JWT_ISSUER:
            claims["iss"] = settings.JWT_ISSUER
        if settings.JWT_AUDIENCE:
            claims["aud"] = settings.JWT_AUDIENCE
        token = jwt.encode(claims, private_key, algorithm=DEV_KEY_ALGORITHM, headers={"kid": kid})
        self.stdout.write(f"Bearer {token}")
