"""Create the first admin user when none exists (used by scripts/run)."""

import os
import secrets

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand


class Command(BaseCommand):
    help = "Create a superuser 'admin' (password from ADMIN_PASSWORD, else generated) if none exists."

    def add_arguments(self, parser) -> None:  # type: ignore[no-untyped-def]
        parser.add_argument("--username", default=os.environ.get("ADMIN_USERNAME", "admin"))

    def handle(self, *args, **options) -> None:  # type: ignore[no-untyped-def]
        user_model = get_user_model()
        if user_model.objects.filter(is_superuser=True).exists():
            self.stdout.write("admin user: already present, nothing to do")
            return
        password = os.environ.get("ADMIN_PASSWORD") or secrets.token_urlsafe(12)
        user_model.objects.create_superuser(options["username"], "", password)
        self.stdout.write(
            self.style.SUCCESS(f"admin user created: {options['username']} / {password} (change it in admin)")
        )
