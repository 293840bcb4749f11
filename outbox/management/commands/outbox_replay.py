"""Re-send outbox events: dead ones, given ids, or every event of one aggregate."""

from __future__ import annotations

import uuid

from django.core.management.base import BaseCommand, CommandError, CommandParser

from outbox.services import outbox_replay


class Command(BaseCommand):
    help = "Reset outbox events to pending so the relay sends them again."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--dead", action="store_true", help="every dead event")
        parser.add_argument("--id", nargs="+", default=[], metavar="UUID", help="these events")
        parser.add_argument("--aggregate", metavar="TYPE:ID", help="every event of an aggregate")

    def handle(self, *args: object, **options: object) -> None:
        ids = options["id"] or []
        aggregate = None
        if options["aggregate"]:
            aggregatetype, sep, aggregateid = str(options["aggregate"]).partition(":")
            if not sep or not aggregatetype or not aggregateid:
                raise CommandError("--aggregate must be TYPE:ID")
            aggregate = (aggregatetype, aggregateid)
        if not (ids or options["dead"] or aggregate):
            raise CommandError("choose events: --dead, --id UUID… or --aggregate TYPE:ID")
        try:
            ids = [str(uuid.UUID(str(value))) for value in ids]  # type: ignore[union-attr]
        except ValueError as exc:
            raise CommandError(f"--id: {exc}") from exc
        count = outbox_replay(ids=ids, dead=bool(options["dead"]), aggregate=aggregate)
        self.stdout.write(f"{count} events reset to pending")
