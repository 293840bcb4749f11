"""manage.py saga_list [--stuck] [--type T] [--status S] [--limit N]."""

from __future__ import annotations

from django.core.management.base import BaseCommand

from sagas.selectors import saga_list


class Command(BaseCommand):
    help = "List sagas, newest first; --stuck: failed, or open past their deadline or with an expired lease."

    def add_arguments(self, parser) -> None:  # type: ignore[no-untyped-def]
        parser.add_argument("--stuck", action="store_true")
        parser.add_argument("--type", dest="saga_type")
        parser.add_argument("--status")
        parser.add_argument("--limit", type=int, default=50)

    def handle(self, *args, **options) -> None:  # type: ignore[no-untyped-def]
        sagas = list(
            saga_list(stuck=options["stuck"], saga_type=options["saga_type"], status=options["status"])[
                : options["limit"]
            ]
        )
        if not sagas:
            self.stdout.write("no sagas" + (" stuck" if options["stuck"] else ""))
            return
        self.stdout.write(f"{'id':36}  {'type':16}  {'status':12}  {'step':18}  {'reason':22}  updated")
        for saga in sagas:
            self.stdout.write(
                f"{saga.id!s:36}  {saga.saga_type:16}  {saga.status:12}  {saga.current_step:18}  "
                f"{saga.reason:22}  {saga.updated_at:%Y-%m-%d %H:%M:%S}"
            )
        self.stdout.write(f"{len(sagas)} saga(s)")
