"""`manage.py revoke_token JTI [--ttl SECONDS] | --token JWT`: refuse a token everywhere until it
would expire (its own `exp` with --token; JWT_MAX_TOKEN_LIFETIME_SECONDS when only the jti is known).

`manage.py revoke_token --purge-expired` deletes the records of tokens that have expired anyway.
"""

from __future__ import annotations

from datetime import UTC, datetime

import jwt
from django.core.management.base import BaseCommand, CommandError

from common.command_args import positive_int
from common.errors import ServiceUnavailable
from gateway.services.revocation import revoked_tokens_purge, token_revoke


class Command(BaseCommand):
    help = "Revoke a token by its jti on every gateway instance (database record + Redis + message)."

    def add_arguments(self, parser) -> None:  # noqa: ANN001
        parser.add_argument("jti", nargs="?")
        parser.add_argument(
            "--ttl",
            type=positive_int,
            default=None,
            help="The token's remaining lifetime in seconds (default: the longest a token may live, "
            "JWT_MAX_TOKEN_LIFETIME_SECONDS).",
        )
        parser.add_argument(
            "--token", help="the token itself: its jti and exp are read from it (no signature needed)"
        )
        parser.add_argument(
            "--purge-expired", action="store_true", help="delete revocations of tokens that have expired"
        )
        parser.add_argument(
            "--dry-run", action="store_true", help="with --purge-expired: count, delete nothing"
        )

    def handle(  # noqa: ANN002, ANN003
        self, *args, jti: str | None, ttl: int | None, token: str | None, purge_expired: bool, **options
    ) -> None:
        if options.get("dry_run") and not purge_expired:
            raise CommandError("--dry-run applies to --purge-expired only")
        if purge_expired:
            if jti or token:
                raise CommandError("give a JTI or --purge-expired, not both")
            if options.get("dry_run"):
                count = revoked_tokens_purge(dry_run=True)
                self.stdout.write(f"dry run: {count} revocation(s) of expired tokens would be purged")
                return
            self.stdout.write(f"purged {revoked_tokens_purge()} revocation(s) of expired tokens")
            return
        expires_at = None
        if token:
            if jti or ttl is not None:
                raise CommandError("give --token alone (its jti and exp are read from it)")
            jti, expires_at = _jti_and_exp(token)
        if not jti:
            raise CommandError("give the JTI to revoke (or --token, or --purge-expired)")
        if ttl is not None and ttl <= 0:
            raise CommandError("--ttl must be positive")
        try:
            revoked = token_revoke(jti=jti, ttl_seconds=ttl, expires_at=expires_at)
        except ValueError as exc:
            raise CommandError(str(exc)) from exc
        except ServiceUnavailable as exc:  # recorded in the database, but Redis was not updated
            raise CommandError(str(exc.detail)) from exc
        self.stdout.write(f"revoked {revoked.jti} until {revoked.expires_at.isoformat()}")


def _jti_and_exp(token: str) -> tuple[str, datetime | None]:
    try:
        claims = jwt.decode(token, options={"verify_signature": False})
    except jwt.InvalidTokenError as exc:
        raise CommandError(f"--token is not a JWT: {exc}") from exc
    jti, exp = claims.get("jti"), claims.get("exp")
    if not isinstance(jti, str) or not jti:
        raise CommandError("the token has no jti: it cannot be revoked individually")
    if isinstance(exp, int | float) and not isinstance(exp, bool) and 0 < exp < 1e11:
        return jti, datetime.fromtimestamp(exp, tz=UTC)
    return jti, None
