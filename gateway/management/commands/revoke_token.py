"""`manage.py revoke_token JTI [--ttl SECONDS]`: refuse a token everywhere until it would expire.

`manage.py revoke_token --purge-expired` deletes the records of tokens that have expired anyway.
"""

from __future__ import annotations

from django.core.management.base import BaseCommand, CommandError

from common.errors import ServiceUnavailable
from gateway.services.revocation import DEFAULT_REVOCATION_TTL_SECONDS, revoked_tokens_purge, token_revoke


class Command(BaseCommand):
    help = "Revoke a token by its jti on every gateway instance (database record + Redis + message)."

    def add_arguments(self, parser) -> None:  # noqa: ANN001
        parser.add_argument("jti", nargs="?")
        parser.add_argument(
            "--ttl",
            type=int,
            default=DEFAULT_REVOCATION_TTL_SECONDS,
            help="Seconds to keep the revocation: at least the token's remaining lifetime "
            f"(default {DEFAULT_REVOCATION_TTL_SECONDS}).",
        )
        parser.add_argument(
            "--purge-expired", action="store_true", help="delete revocations of tokens that have expired"
        )

    def handle(self, *args, jti: str | None, ttl: int, purge_expired: bool, **options) -> None:  # noqa: ANN002, ANN003
        if purge_expired:
            if jti:
                raise CommandError("give a JTI or --purge-expired, not both")
            self.stdout.write(f"purged {revoked_tokens_purge()} revocation(s) of expired tokens")
            return
        if not jti:
            raise CommandError("give the JTI to revoke (or --purge-expired)")
        if ttl <= 0:
            raise CommandError("--ttl must be positive")
        try:
            revoked = token_revoke(jti=jti, ttl_seconds=ttl)
        except ValueError as exc:
            raise CommandError(str(exc)) from exc
        except ServiceUnavailable as exc:  # recorded in the database, but Redis was not updated
            raise CommandError(str(exc.detail)) from exc
        self.stdout.write(f"revoked {revoked.jti} until {revoked.expires_at.isoformat()}")
