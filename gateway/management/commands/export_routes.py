"""`manage.py export_routes [--output FILE]`: services and routes in the load_routes format."""

from __future__ import annotations

import json
from pathlib import Path

from django.core.management.base import BaseCommand, CommandError

from gateway.services.config_io import routes_config_export


class Command(BaseCommand):
    help = "Write every service and route as JSON (loads back with load_routes)."

    def add_arguments(self, parser) -> None:  # noqa: ANN001
        parser.add_argument("--output", "-o", help="file to write (default: standard output)")

    def handle(self, *args, output: str | None, **options) -> None:  # noqa: ANN002, ANN003
        data = routes_config_export()
        text = json.dumps(data, indent=2, ensure_ascii=False) + "\n"
        if not output:
            self.stdout.write(text, ending="")
            return
        try:
            Path(output).write_text(text, encoding="utf-8")
        except OSError as exc:
            raise CommandError(f"cannot write {output}: {exc.strerror or exc}") from exc
        self.stdout.write(
            f"exported {len(data['services'])} service(s) and {len(data['routes'])} route(s) to {output}"
        )
