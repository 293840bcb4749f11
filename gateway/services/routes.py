"""Writes to services, targets and routes; every write invalidates the route caches on commit."""

from __future__ import annotations

from collections.abc import Iterable

from django.core.exceptions import ValidationError
from django.db import transaction
from django.db.models import QuerySet

from gateway.models import HTTP_METHODS, Route, Service, ServiceTarget
from gateway.policies.registry import policies_errors
from gateway.routing import route_cache_invalidate, route_config_errors
from gateway.selectors import route_overlapping
from gateway.services.response_cache import response_cache_invalidate


def route_methods_canonical(methods: Iterable[str]) -> list[str]:
    """Methods de-duplicated, in the order of HTTP_METHODS (stable for comparisons and export)."""
    wanted = set(methods)
    return [method for method in HTTP_METHODS if method in wanted]


def route_validate(*, route: Route) -> None:
    """Raise ValidationError (by field) for a bad pattern/methods/rewrite/condition, or an enabled
    route with the same path that shares a method (it could never be chosen)."""
    errors = route_config_errors(
        path=route.path,
        methods=route.methods,
        rewrite=route.rewrite,
        condition=route.condition,
        auth_required=route.auth_required,
        required_permission=route.required_permission,
    )
    policy_problems = policies_errors(route.policies)
    if policy_problems:
        errors["policies"] = [
            f"{name}: {message}" if name else message
            for name, messages in policy_problems.items()
            for message in messages
        ]
    if not errors and route.enabled:
        clashes = route_overlapping(path=route.path, methods=list(route.methods), exclude_id=route.pk)
        if clashes:
            other = clashes[0]
            shared = sorted(set(route.methods) & set(other.methods))
            errors["path"] = [
                f"Route #{other.pk} ({', '.join(other.methods)} {other.path}) already serves "
                f"{', '.join(shared)} on this path; disable or change one of them."
            ]
    if errors:
        raise ValidationError(errors)


@transaction.atomic
def route_save(*, route: Route) -> Route:
    """Create or update a route (already validated by its form or `route_validate`)."""
    route.methods = route_methods_canonical(route.methods)
    route.condition = route.condition or {}
    route.policies = route.policies or {}
    route.save()
    route_cache_invalidate()
    return route


@transaction.atomic
def route_delete(*, route: Route) -> None:
    route_id = route.pk
    route.delete()
    route_cache_invalidate()
    response_cache_invalidate(route_id=route_id)


@transaction.atomic
def routes_delete(*, routes: QuerySet[Route]) -> int:
    route_ids = list(routes.values_list("pk", flat=True))
    deleted, _ = Route.objects.filter(pk__in=route_ids).delete()
    route_cache_invalidate()
    for route_id in route_ids:
        response_cache_invalidate(route_id=route_id)
    return deleted


@transaction.atomic
def routes_set_enabled(*, routes: QuerySet[Route], enabled: bool) -> tuple[int, list[str]]:
    """Enable or disable routes; a route whose enabling would duplicate an enabled route is left
    disabled and reported. Returns (how many changed, why the others were refused)."""
    changed = 0
    refused: list[str] = []
    for route in routes.exclude(enabled=enabled).order_by("id"):
        route.enabled = enabled
        if enabled:
            try:
                route_validate(route=route)
            except ValidationError as exc:
                refused.append(f"{route}: {' '.join(m for ms in exc.message_dict.values() for m in ms)}")
                continue
        route.save(update_fields=["enabled", "updated_at"])
        changed += 1
    if changed:
        route_cache_invalidate()
    return changed, refused


@transaction.atomic
def service_save(*, service: Service) -> Service:
    service.save()
    route_cache_invalidate()
    return service


@transaction.atomic
def service_delete(*, service: Service) -> None:
    """Refused (ProtectedError) while routes point at the service."""
    service.delete()
    route_cache_invalidate()


@transaction.atomic
def service_targets_set(*, service: Service, targets: list[tuple[str, bool]]) -> bool:
    """Make the service's targets exactly `targets` ([(url, enabled)]); True when anything changed."""
    wanted = {url.rstrip("/") if url.count("/") > 2 else url: enabled for url, enabled in targets}
    changed = False
    existing = {target.url: target for target in service.targets.all()}
    for url, target in existing.items():
        if url not in wanted:
            target.delete()
            changed = True
    for url, enabled in wanted.items():
        target = existing.get(url)
        if target is None:
            ServiceTarget.objects.create(service=service, url=url, enabled=enabled)
            changed = True
        elif target.enabled != enabled:
            target.enabled = enabled
            target.save(update_fields=["enabled"])
            changed = True
    if changed:
        service.save(update_fields=["updated_at"])  # new route versions: response cache tag
        route_cache_invalidate()
    return changed


def routes_changed() -> None:
    """Tell every process the routing table changed (after a write made outside these services,
    e.g. the admin's inline target formset)."""
    route_cache_invalidate()
