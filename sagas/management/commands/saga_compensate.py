"""manage.py saga_compensate ID: give up on a running saga (its succeeded steps are undone)."""

from __future__ import annotations

from django.core.management.base import BaseCommand, CommandError

from common.errors import ApplicationError
from sagas.management.commands._common import parse_saga_id
from sagas.services import saga_compensate


class Command(BaseCommand):
    help = "Compensate a running saga: the compensations of its succeeded steps run in reverse order."

    def add_arguments(self, parser) -> None:  # type: ignore[no-untyped-def]
        parser.add_argument("saga_id")
        parser.add_argument("--reason", default="operator")

    def handle(self, *args, **options) -> None:  # type: ignore[no-untyped-def]
        saga_id = parse_saga_id(options["saga_id"])
        try:
            saga = saga_compensate(saga_id=saga_id, reason=options["reason"])
        except ApplicationError as exc:
            raise CommandError(exc.detail) from None
        self.stdout.write(self.style.SUCCESS(f"saga {saga_id}: {saga.status} (reason {saga.reason})"))
