"""Read-side queries of the gateway: services and routes."""

from __future__ import annotations

from django.db.models import Prefetch, QuerySet

from gateway.models import Route, RoutesVersion, Service, ServiceTarget
from gateway.types import ResolvedRoute


def service_list() -> QuerySet[Service]:
    return Service.objects.prefetch_related("targets").order_by("name")


def service_get_by_name(*, name: str) -> Service | None:
    return Service.objects.filter(name=name).first()


def route_list() -> QuerySet[Route]:
    return Route.objects.select_related("service").order_by("path", "id")


def route_list_enabled() -> QuerySet[Route]:
    enabled_targets = ServiceTarget.objects.filter(enabled=True).order_by("id")
    return (
        Route.objects.filter(enabled=True)
        .select_related("service")
        .prefetch_related(Prefetch("service__targets", queryset=enabled_targets, to_attr="enabled_targets"))
        .order_by("id")
    )


def route_resolved(*, route: Route) -> ResolvedRoute:
    """The cacheable, ORM-free form of a route. A disabled service has no usable targets."""
    service = route.service
    if service.enabled:
        targets = getattr(service, "enabled_targets", None)
        if targets is None:
            targets = service.targets.filter(enabled=True).order_by("id")
        urls = tuple(target.url.rstrip("/") for target in targets)
    else:
        urls = ()
    changed = max(route.updated_at, service.updated_at)
    return ResolvedRoute(
        id=route.id,
        methods=tuple(route.methods),
        path=route.path,
        service=service.name,
        targets=urls,
        rewrite=route.rewrite,
        required_permission=route.required_permission,
        condition=dict(route.condition or {}),
        timeout_ms=route.timeout_ms,
        retry_count=route.retry_count,
        auth_required=route.auth_required,
        cache_ttl_seconds=route.cache_ttl_seconds,
        idempotency=route.idempotency,
        priority=route.priority,
        # not an object (written by SQL): kept as it is, so that this route is closed, not the table
        policies=dict(route.policies) if isinstance(route.policies, dict) else route.policies or {},
        version=int(changed.timestamp() * 1_000_000),
    )


def route_resolved_list() -> list[ResolvedRoute]:
    """Every enabled route, ready for the routing table (one query plus one for targets)."""
    return [route_resolved(route=route) for route in route_list_enabled()]


def route_overlapping(*, path: str, methods: list[str], exclude_id: int | None = None) -> list[Route]:
    """Enabled routes with exactly this path pattern sharing at least one method."""
    wanted = set(methods)
    queryset = Route.objects.filter(path=path, enabled=True)
    if exclude_id is not None:
        queryset = queryset.exclude(pk=exclude_id)
    return [route for route in queryset if wanted & set(route.methods or [])]


def routes_version_get() -> int:
    """The database's routes version (0 before the first change)."""
    return RoutesVersion.objects.filter(pk=1).values_list("version", flat=True).first() or 0
