"""Route configuration files (SPEC §3 "Config import"): `load_routes` and `export_routes`.

A file is `{"services": [...], "routes": [...]}`. A route is identified by its path and its set
of methods; a file is the truth for the fields of the routes it names (a field left out gets the
model default). Loading is all-or-nothing: every entry is checked first, every problem is
reported with the entry's index and path, and the writes happen in one transaction.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from django.core.exceptions import ValidationError
from django.db import transaction

from gateway.models import Route, Service
from gateway.policies.registry import BY_FILE_KEY, BY_NAME, policies_errors
from gateway.routing import route_cache_invalidate, route_config_errors, service_target_url_errors
from gateway.services.routes import route_methods_canonical, route_validate

# File key → model field. The SPEC's seed keys first, then every field by its model name.
ROUTE_KEY_ALIASES = {
    "backend": "service",
    "x-required-permission": "required_permission",
    "x-condition": "condition",
    "timeout": "timeout_ms",
    "retry": "retry_count",
}
ROUTE_FIELDS = (
    "rewrite",
    "required_permission",
    "condition",
    "timeout_ms",
    "retry_count",
    "auth_required",
    "cache_ttl_seconds",
    "idempotency",
    "priority",
    "enabled",
    "policies",
)
SERVICE_KEYS = {"name", "targets", "enabled", "description"}


class ConfigFileError(Exception):
    """A route file that cannot be loaded; `problems` lists every reason, each naming its entry."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("\n".join(problems))


@dataclass
class LoadReport:
    dry_run: bool = False
    lines: list[str] = field(default_factory=list)
    counts: dict[str, int] = field(
        default_factory=lambda: {
            "created": 0,
            "updated": 0,
            "unchanged": 0,
            "pruned": 0,
            "services_created": 0,
            "services_updated": 0,
            "services_unchanged": 0,
        }
    )

    def add(self, what: str, line: str) -> None:
        self.counts[what] += 1
        self.lines.append(line)

    @property
    def changed(self) -> bool:
        c = self.counts
        return bool(
            c["created"] or c["updated"] or c["pruned"] or c["services_created"] or c["services_updated"]
        )


def _route_defaults() -> dict[str, Any]:
    return {name: Route._meta.get_field(name).get_default() for name in ROUTE_FIELDS}


def _label(entry: Any) -> str:
    if not isinstance(entry, dict):
        return ""
    methods = entry.get("methods", entry.get("method", "?"))
    if isinstance(methods, list):
        methods = ",".join(str(m) for m in methods)
    return f" ({methods} {entry.get('path', '?')})"


@dataclass
class _ServiceSpec:
    name: str
    description: str
    enabled: bool
    targets: list[tuple[str, bool]]


@dataclass
class _RouteSpec:
    index: int
    label: str
    methods: list[str]
    path: str
    service: str
    fields: dict[str, Any]


def routes_config_read(*, path: str | Path) -> dict[str, Any]:
    """Parse a route file; raises ConfigFileError with the position of a JSON syntax error."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigFileError([f"{path}: cannot read: {exc.strerror or exc}"]) from exc
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigFileError(
            [f"{path}: not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}"]
        ) from exc
    return data


def _parse(data: Any) -> tuple[list[_ServiceSpec], list[_RouteSpec], list[str]]:
    problems: list[str] = []
    if not isinstance(data, dict):
        return [], [], ['The file must hold an object: {"services": [...], "routes": [...]}.']
    unknown_top = set(data) - {"services", "routes"}
    if unknown_top:
        problems.append(f"Unknown top-level key(s): {', '.join(sorted(unknown_top))}.")
    services_raw = data.get("services", [])
    routes_raw = data.get("routes", [])
    if not isinstance(services_raw, list):
        problems.append('"services" must be a list.')
        services_raw = []
    if not isinstance(routes_raw, list):
        problems.append('"routes" must be a list.')
        routes_raw = []

    services: list[_ServiceSpec] = []
    seen_services: set[str] = set()
    for index, entry in enumerate(services_raw):
        where = f"services[{index}]"
        if not isinstance(entry, dict):
            problems.append(f"{where}: must be an object with name and targets.")
            continue
        name = entry.get("name")
        where = f"services[{index}] ({name})"
        unknown = set(entry) - SERVICE_KEYS
        if unknown:
            problems.append(f"{where}: unknown key(s) {', '.join(sorted(unknown))}.")
        if not isinstance(name, str) or not name:
            problems.append(f"services[{index}]: needs a name.")
            continue
        try:
            Service._meta.get_field("name").run_validators(name)
        except ValidationError as exc:
            problems.append(f"{where}: name: {' '.join(exc.messages)}")
        if name in seen_services:
            problems.append(f"{where}: the service is listed twice.")
        seen_services.add(name)
        targets: list[tuple[str, bool]] = []
        raw_targets = entry.get("targets", [])
        if not isinstance(raw_targets, list) or not raw_targets:
            problems.append(f"{where}: targets must be a non-empty list of URLs.")
            raw_targets = []
        for position, target in enumerate(raw_targets):
            url, enabled = (target, True) if isinstance(target, str) else (None, True)
            if isinstance(target, dict):
                url, enabled = target.get("url"), target.get("enabled", True)
            errors = service_target_url_errors(url)
            if not isinstance(enabled, bool):
                errors.append("enabled must be true or false.")
            if errors:
                problems.append(f"{where}: targets[{position}] {url!r}: {' '.join(errors)}")
            else:
                targets.append((url.rstrip("/") if url.count("/") > 2 else url, enabled))
        enabled = entry.get("enabled", True)
        if not isinstance(enabled, bool):
            problems.append(f"{where}: enabled must be true or false.")
        services.append(_ServiceSpec(name, str(entry.get("description", "")), bool(enabled), targets))

    routes: list[_RouteSpec] = []
    defaults = _route_defaults()
    allowed_keys = {"method", "methods", "path", "service", *ROUTE_KEY_ALIASES, *ROUTE_FIELDS, *BY_FILE_KEY}
    for index, entry in enumerate(routes_raw):
        where = f"routes[{index}]{_label(entry)}"
        if not isinstance(entry, dict):
            problems.append(f"{where}: must be an object.")
            continue
        entry_problems: list[str] = []
        unknown = set(entry) - allowed_keys
        if unknown:
            entry_problems.append(f"unknown key(s) {', '.join(sorted(unknown))}")
        if ("method" in entry) == ("methods" in entry):
            entry_problems.append('give either "method" (one) or "methods" (a list)')
            methods: Any = []
        else:
            methods = [entry["method"]] if "method" in entry else entry["methods"]
        values: dict[str, Any] = {}
        for key, value in entry.items():
            model_name = ROUTE_KEY_ALIASES.get(key, key)
            if model_name in values:
                entry_problems.append(f'"{key}" and "{model_name}" both given')
            if model_name in ROUTE_FIELDS or model_name == "service":
                values[model_name] = value
        file_policies = {BY_FILE_KEY[key].name: value for key, value in entry.items() if key in BY_FILE_KEY}
        if file_policies:
            if "policies" in values:
                entry_problems.append('"policies" and x-… policy keys both given; use one form')
            values["policies"] = file_policies
        for name, messages in policies_errors(values.get("policies")).items():
            label = BY_NAME[name].file_key if name in BY_NAME else "policies"
            entry_problems.extend(f"{label}: {message}" for message in messages)
        service_name = values.pop("service", None)
        if not isinstance(service_name, str) or not service_name:
            entry_problems.append('"backend" (the service name) is required')
        path = entry.get("path")
        for name, messages in route_config_errors(
            path=path,
            methods=methods,
            rewrite=values.get("rewrite", ""),
            condition=values.get("condition"),
            auth_required=values.get("auth_required", defaults["auth_required"]),
            required_permission=values.get("required_permission", ""),
        ).items():
            entry_problems.extend(f"{name}: {message}" for message in messages)
        fields = {**defaults, **values}
        for name in ROUTE_FIELDS:
            model_field = Route._meta.get_field(name)
            try:
                fields[name] = model_field.clean(fields[name], None)
            except ValidationError as exc:
                entry_problems.append(f"{name}: {' '.join(exc.messages)}")
        cache_without_get = isinstance(methods, list) and not {"GET", "HEAD"} & {str(m) for m in methods}
        if methods and fields.get("cache_ttl_seconds") and cache_without_get:
            entry_problems.append("cache_ttl_seconds: only GET/HEAD responses are cached")
        if entry_problems:
            problems.extend(f"{where}: {problem.rstrip('.')}." for problem in entry_problems)
            continue
        routes.append(_RouteSpec(index, where, route_methods_canonical(methods), path, service_name, fields))

    # The same path with a shared method twice in the file: one could never be chosen.
    for position, spec in enumerate(routes):
        for other in routes[:position]:
            shared = set(spec.methods) & set(other.methods)
            if spec.path == other.path and shared and spec.fields["enabled"] and other.fields["enabled"]:
                problems.append(
                    f"{spec.label}: same path and method(s) {', '.join(sorted(shared))} as {other.label}."
                )
    return services, routes, problems


class _Rollback(Exception):
    pass


def routes_config_load(*, data: Any, prune: bool = False, dry_run: bool = False) -> LoadReport:
    """Apply a parsed route file. Raises ConfigFileError (nothing changed) when anything is wrong."""
    services, routes, problems = _parse(data)
    if problems:
        raise ConfigFileError(problems)
    report = LoadReport(dry_run=dry_run)
    try:
        with transaction.atomic():
            _apply(services, routes, prune=prune, report=report)
            if dry_run:
                raise _Rollback
            if report.changed:
                route_cache_invalidate()
    except _Rollback:
        pass
    return report


def _apply(
    services: list[_ServiceSpec], routes: list[_RouteSpec], *, prune: bool, report: LoadReport
) -> None:
    from gateway.services.routes import service_targets_set

    by_name: dict[str, Service] = {}
    for spec in services:
        service = Service.objects.select_for_update().filter(name=spec.name).first()
        if service is None:
            service = Service.objects.create(
                name=spec.name, description=spec.description, enabled=spec.enabled
            )
            service_targets_set(service=service, targets=spec.targets)
            report.add(
                "services_created", f"created  service {spec.name} → {', '.join(u for u, _ in spec.targets)}"
            )
        else:
            changed = service.description != spec.description or service.enabled != spec.enabled
            if changed:
                service.description, service.enabled = spec.description, spec.enabled
                service.save()
            changed = service_targets_set(service=service, targets=spec.targets) or changed
            if changed:
                report.add("services_updated", f"updated  service {spec.name}")
            else:
                report.counts["services_unchanged"] += 1
        by_name[spec.name] = service

    problems: list[str] = []
    for spec in routes:
        if spec.service not in by_name:
            service = Service.objects.filter(name=spec.service).first()
            if service is None:
                problems.append(f"{spec.label}: backend {spec.service!r} is not a known service.")
                continue
            by_name[spec.service] = service
    if problems:
        raise ConfigFileError(problems)

    existing = list(Route.objects.select_for_update().select_related("service").order_by("id"))
    by_key = {(route.path, tuple(route_methods_canonical(route.methods))): route for route in existing}
    wanted_keys = {(spec.path, tuple(spec.methods)) for spec in routes}
    if prune:
        for key, route in by_key.items():
            if key not in wanted_keys:
                route.delete()
                report.add("pruned", f"pruned   {','.join(key[1])} {key[0]}")

    for spec in routes:
        service = by_name[spec.service]
        route = by_key.get((spec.path, tuple(spec.methods)))
        created = route is None
        if created:
            route = Route(path=spec.path, methods=spec.methods)
        changes = [] if created else _changes(route, spec, service)
        if not created and not changes:
            report.counts["unchanged"] += 1
            continue
        route.service = service
        for name, value in spec.fields.items():
            setattr(route, name, value)
        try:
            route_validate(route=route)
        except ValidationError as exc:
            problems.extend(
                f"{spec.label}: {name}: {' '.join(messages)}" for name, messages in exc.message_dict.items()
            )
            continue
        route.save()
        summary = f"{','.join(spec.methods)} {spec.path} → {service.name}"
        if created:
            report.add("created", f"created  {summary}")
        else:
            report.add("updated", f"updated  {summary} ({', '.join(changes)})")
    if problems:
        raise ConfigFileError(problems)


def _changes(route: Route, spec: _RouteSpec, service: Service) -> list[str]:
    changes = []
    if route.service_id != service.pk:
        changes.append(f"backend {route.service.name} → {service.name}")
    for name, value in spec.fields.items():
        if getattr(route, name) != value:
            changes.append(f"{name} {getattr(route, name)!r} → {value!r}")
    return changes


def routes_config_export() -> dict[str, Any]:
    """Every service and route in the file format (loads back to the same configuration)."""
    services = []
    for service in Service.objects.prefetch_related("targets").order_by("name"):
        targets: list[Any] = [
            target.url if target.enabled else {"url": target.url, "enabled": False}
            for target in service.targets.all()
        ]
        item: dict[str, Any] = {"name": service.name, "targets": targets}
        if service.description:
            item["description"] = service.description
        if not service.enabled:
            item["enabled"] = False
        services.append(item)
    routes = []
    for route in Route.objects.select_related("service").order_by("path", "id"):
        methods = route_methods_canonical(route.methods)
        entry: dict[str, Any] = {"method": methods[0]} if len(methods) == 1 else {"methods": methods}
        entry.update(
            {
                "path": route.path,
                "backend": route.service.name,
                "x-required-permission": route.required_permission,
                "x-condition": route.condition or {},
                "timeout": route.timeout_ms,
                "retry": route.retry_count,
                "auth_required": route.auth_required,
                "cache_ttl_seconds": route.cache_ttl_seconds,
                "idempotency": route.idempotency,
                "priority": route.priority,
                "enabled": route.enabled,
                "rewrite": route.rewrite,
            }
        )
        for name, config in (route.policies or {}).items():
            entry[BY_NAME[name].file_key if name in BY_NAME else name] = config
        routes.append(entry)
    return {"services": services, "routes": routes}
