"""manage.py saga_resume ID: retry a failed saga's compensation, or re-enqueue an open saga's step."""

from __future__ import annotations

from django.core.management.base import BaseCommand, CommandError

from common.errors import ApplicationError
from sagas.management.commands._common import parse_saga_id
from sagas.models import SagaInstance
from sagas.services import saga_resume


class Command(BaseCommand):
    help = "Resume a saga: a failed one retries its compensation; an open one has its step enqueued again."

    def add_arguments(self, parser) -> None:  # type: ignore[no-untyped-def]
        parser.add_argument("saga_id")

    def handle(self, *args, **options) -> None:  # type: ignore[no-untyped-def]
        saga_id = parse_saga_id(options["saga_id"])
        try:
            done = saga_resume(saga_id=saga_id)
        except ApplicationError as exc:
            raise CommandError(exc.detail) from None
        status = SagaInstance.objects.values_list("status", flat=True).get(pk=saga_id)
        self.stdout.write(self.style.SUCCESS(f"saga {saga_id}: {done}; now {status}"))
