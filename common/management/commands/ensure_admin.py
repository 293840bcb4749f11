"""Create the first admin user when none exists (used by scripts/run)."""

import secrets

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand


class Command(BaseCommand):
    help = (
        "Create a superuser (ADMIN_USERNAME, default 'admin'; password from ADMIN_PASSWORD, "
        "else generated and printed) if none exists."
    )

    def add_arguments(self, parser) -> None:  # type: ignore[no-untyped-def]
        parser.add_argument("--username", default=None, help="default: the ADMIN_USERNAME setting")

    def handle(self, *args, **options) -> None:  # type: ignore[no-untyped-def]
        user_model = get_user_model()
        if user_model.objects.filter(is_superuser=True).exists():
            self.stdout.write("admin user: already present, nothing to do")
            return
        username = options["username"] or settings.ADMIN_USERNAME
        password = settings.ADMIN_PASSWORD or secrets.token_urlsafe(12)
        user_model.objects.create_superuser(username, "", password)
        self.stdout.write(
            self.style.SUCCESS(f"admin user created: {username} / {password} (change it in admin)")
        )
