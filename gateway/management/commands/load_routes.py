"""`manage.py load_routes FILE.json [--dry-run] [--prune]`: create/update services and routes."""

from __future__ import annotations

from django.core.management.base import BaseCommand, CommandError

from gateway.services.config_io import ConfigFileError, routes_config_load, routes_config_read


class Command(BaseCommand):
    help = (
        "Load services and routes from a JSON file (SPEC format). Routes are matched by path and "
        "methods; all-or-nothing; every instance picks the change up within a second."
    )

    def add_arguments(self, parser) -> None:  # noqa: ANN001
        parser.add_argument("file", help="route file, e.g. demo/routes.json")
        parser.add_argument("--dry-run", action="store_true", help="report what would change, change nothing")
        parser.add_argument("--prune", action="store_true", help="delete routes the file does not name")

    def handle(self, *args, file: str, dry_run: bool, prune: bool, **options) -> None:  # noqa: ANN002, ANN003
        try:
            report = routes_config_load(data=routes_config_read(path=file), prune=prune, dry_run=dry_run)
        except ConfigFileError as exc:
            for problem in exc.problems:
                self.stderr.write(problem)
            raise CommandError(f"{file}: {len(exc.problems)} problem(s); nothing was changed.") from exc
        for line in report.lines:
            self.stdout.write(line)
        c = report.counts
        prefix = "dry run, nothing changed: would have " if dry_run else ""
        self.stdout.write(
            f"{prefix}routes: {c['created']} created, {c['updated']} updated, {c['unchanged']} unchanged, "
            f"{c['pruned']} pruned; services: {c['services_created']} created, "
            f"{c['services_updated']} updated, {c['services_unchanged']} unchanged"
        )
