"""`manage.py revoke_token JTI [--ttl SECONDS]`: refuse a token everywhere until it would expire."""

from __future__ import annotations

from django.core.management.base import BaseCommand, CommandError

from gateway.services.revocation import DEFAULT_REVOCATION_TTL_SECONDS, token_revoke


class Command(BaseCommand):
    help = "Revoke a token by its jti on every gateway instance (database record + Redis + message)."

    def add_arguments(self, parser) -> None:  # noqa: ANN001
        parser.add_argument("jti")
        parser.add_argument(
            "--ttl",
            type=int,
            default=DEFAULT_REVOCATION_TTL_SECONDS,
            help="Seconds to keep the revocation: at least the token's remaining lifetime "
            f"(default {DEFAULT_REVOCATION_TTL_SECONDS}).",
        )

    def handle(self, *args, jti: str, ttl: int, **options) -> None:  # noqa: ANN002, ANN003
        if ttl <= 0:
            raise CommandError("--ttl must be positive")
        try:
            revoked = token_revoke(jti=jti, ttl_seconds=ttl)
        except ValueError as exc:
            raise CommandError(str(exc)) from exc
        self.stdout.write(f"revoked {revoked.jti} until {revoked.expires_at.isoformat()}")
