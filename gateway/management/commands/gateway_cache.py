"""`manage.py gateway_cache stats|flush [--kind KIND]`: cache figures and flushing, by key kind.

Embedded mode (no REDIS_URL): the server processes' caches live in their own memory, which this
command cannot read. `stats` says so and exits non-zero instead of printing this process's zeros;
`flush` reaches them through the database leg of the invalidation bus (rbac, revoked, jwks) and
the routes version (routes); the per-process response caches cannot be reached (non-zero exit).
"""

from __future__ import annotations

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from gateway.routing import route_cache_invalidate_now
from gateway.services.cache_stats import CACHE_KINDS, cache_stats
from gateway.services.invalidation import invalidation_publish
from gateway.services.shared_cache import shared_cache_delete_pattern


class Command(BaseCommand):
    help = "Show cache hits/misses/size by key kind, or flush a kind (SCAN + DEL, never KEYS)."

    def add_arguments(self, parser) -> None:  # noqa: ANN001
        parser.add_argument("action", choices=["stats", "flush"])
        parser.add_argument("--kind", choices=CACHE_KINDS, help="one kind (default: all)")

    def handle(self, *args, action: str, kind: str | None, **options) -> None:  # noqa: ANN002, ANN003
        kinds = [kind] if kind else list(CACHE_KINDS)
        if not settings.REDIS_URL:
            self._embedded(action, kinds)
            return
        try:
            if action == "stats":
                self._stats(kinds)
            else:
                self._flush(kinds)
        except CommandError:
            raise
        except Exception as exc:  # Redis unreachable: say so, exit non-zero
            raise CommandError(f"cache unavailable: {type(exc).__name__}: {exc}") from exc

    def _stats(self, kinds: list[str]) -> None:
        stats = cache_stats()
        self.stdout.write(f"{'kind':<10} {'hits':>10} {'misses':>10} {'hit rate':>9} {'keys':>8}")
        for name in kinds:
            row = stats[name]
            total = row["hits"] + row["misses"]
            rate = f"{100 * row['hits'] / total:.1f}%" if total else "-"
            self.stdout.write(f"{name:<10} {row['hits']:>10} {row['misses']:>10} {rate:>9} {row['size']:>8}")

    def _flush(self, kinds: list[str]) -> None:
        total = 0
        for name in kinds:
            deleted = shared_cache_delete_pattern(f"{name}:*")
            total += deleted
            # Every instance drops its local layer for this kind too.
            if name == "routes":
                route_cache_invalidate_now()
            else:
                invalidation_publish(kind=name, payload={"flush": True})
            self.stdout.write(f"flushed {name}: {deleted} key(s)")
        self.stdout.write(f"flushed {total} key(s) in total")

    def _embedded(self, action: str, kinds: list[str]) -> None:
        if action == "stats":
            raise CommandError(
                "embedded mode (REDIS_URL unset): each server process keeps its caches in its own "
                "memory, which this command cannot read; figures are in each server's /metrics "
                "(gatehouse_cache_requests_total)."
            )
        unreachable = []
        for name in kinds:
            if name == "routes":
                route_cache_invalidate_now()  # the database routes version every process polls
            elif name == "responses":
                unreachable.append(name)
                continue
            else:
                invalidation_publish(kind=name, payload={"flush": True})  # database leg of the bus
            self.stdout.write(f"flushed {name}: every server process drops its entries within 1 s")
        if unreachable:
            raise CommandError(
                "embedded mode (REDIS_URL unset): the server processes' response caches are in their "
                "own memory and cannot be flushed from here; they expire by their route's "
                "cache_ttl_seconds (or restart the server)."
            )
