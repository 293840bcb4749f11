"""`manage.py rbac_invalidate --user U --tenant T | --all`: forget cached permissions everywhere."""

from __future__ import annotations

from django.core.management.base import BaseCommand, CommandError

from gateway.services.rbac import rbac_invalidate


class Command(BaseCommand):
    help = "Drop cached RBAC permissions (one user in one tenant, or all) on every gateway instance."

    def add_arguments(self, parser) -> None:  # noqa: ANN001
        parser.add_argument("--user", help="user id (with --tenant)")
        parser.add_argument("--tenant", help="tenant id (with --user; may be empty)")
        parser.add_argument("--all", action="store_true", help="every user and tenant")

    def handle(self, *args, user: str | None, tenant: str | None, all: bool, **options) -> None:  # noqa: A002, ANN002, ANN003
        if all and (user is not None or tenant is not None):
            raise CommandError("give --all, or --user with --tenant, not both")
        if not all and (user is None or tenant is None):
            raise CommandError("give --user and --tenant, or --all")
        deleted = rbac_invalidate() if all else rbac_invalidate(user_id=user, tenant_id=tenant)
        scope = "all users" if all else f"user {user} in tenant {tenant!r}"
        self.stdout.write(
            f"rbac invalidated for {scope}: {deleted} cached entries deleted, instances notified"
        )
