"""Admin for services and routes. Writes go through gateway.services.routes (cache invalidation)."""

from __future__ import annotations

from typing import Any

from django import forms
from django.contrib import admin, messages
from django.core.exceptions import ValidationError
from django.db.models import Count, QuerySet
from django.http import HttpRequest

from adminsite.display import truncated
from gateway.models import HTTP_METHODS, RevokedToken, Route, Service, ServiceTarget
from gateway.routing import service_target_url_errors
from gateway.services.response_cache import response_cache_invalidate
from gateway.services.routes import (
    route_delete,
    route_methods_canonical,
    route_save,
    route_validate,
    routes_changed,
    routes_delete,
    routes_set_enabled,
    service_delete,
    service_save,
)


class ServiceTargetForm(forms.ModelForm):
    url = forms.URLField(
        max_length=500, assume_scheme="http", help_text="Base URL, e.g. http://10.0.0.5:8080"
    )

    class Meta:
        model = ServiceTarget
        fields = ["url", "enabled"]

    def clean_url(self) -> str:
        url = self.cleaned_data["url"]
        errors = service_target_url_errors(url)
        if errors:
            raise ValidationError(errors)
        return url.rstrip("/") if url.count("/") > 2 else url


class ServiceTargetInline(admin.TabularInline):
    model = ServiceTarget
    form = ServiceTargetForm
    extra = 1
    min_num = 0


@admin.register(Service)
class ServiceAdmin(admin.ModelAdmin):
    list_display = ["name", "enabled", "target_count", "route_count", "updated_at"]
    list_filter = ["enabled"]
    search_fields = ["name", "description", "targets__url"]
    inlines = [ServiceTargetInline]

    def get_queryset(self, request: HttpRequest) -> QuerySet[Service]:
        return (
            super()
            .get_queryset(request)
            .annotate(_targets=Count("targets", distinct=True), _routes=Count("routes", distinct=True))
        )

    @admin.display(description="targets", ordering="_targets")
    def target_count(self, obj: Service) -> int:
        return obj._targets  # type: ignore[attr-defined]

    @admin.display(description="routes", ordering="_routes")
    def route_count(self, obj: Service) -> int:
        return obj._routes  # type: ignore[attr-defined]

    def save_model(self, request: HttpRequest, obj: Service, form: Any, change: bool) -> None:
        service_save(service=obj)

    def save_related(self, request: HttpRequest, form: Any, formsets: Any, change: bool) -> None:
        super().save_related(request, form, formsets, change)
        routes_changed()  # targets edited inline change where routes send traffic

    def delete_model(self, request: HttpRequest, obj: Service) -> None:
        service_delete(service=obj)

    def delete_queryset(self, request: HttpRequest, queryset: QuerySet[Service]) -> None:
        for service in queryset:
            service_delete(service=service)


class RouteForm(forms.ModelForm):
    methods = forms.MultipleChoiceField(
        choices=[(method, method) for method in HTTP_METHODS],
        widget=forms.CheckboxSelectMultiple,
        help_text="HEAD is also served wherever GET is.",
    )

    class Meta:
        model = Route
        fields = [
            "methods",
            "path",
            "service",
            "rewrite",
            "auth_required",
            "required_permission",
            "condition",
            "timeout_ms",
            "retry_count",
            "cache_ttl_seconds",
            "idempotency",
            "priority",
            "enabled",
            "policies",
        ]

    def clean(self) -> dict[str, Any]:
        cleaned = super().clean()
        if self.errors:
            return cleaned
        route = self.instance
        route.methods = route_methods_canonical(cleaned.get("methods") or [])
        for name in (
            "path",
            "rewrite",
            "condition",
            "enabled",
            "auth_required",
            "required_permission",
            "policies",
        ):
            setattr(route, name, cleaned.get(name))
        if cleaned.get("cache_ttl_seconds") and not set(route.methods) & {"GET", "HEAD"}:
            self.add_error("cache_ttl_seconds", "Only GET/HEAD responses are cached; this route has neither.")
        try:
            route_validate(route=route)
        except ValidationError as exc:
            for field, field_errors in exc.message_dict.items():
                self.add_error(field if field in self.fields else None, field_errors)
        cleaned["methods"] = route.methods
        return cleaned


class MethodListFilter(admin.SimpleListFilter):
    title = "method"
    parameter_name = "method"

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        return [(method, method) for method in HTTP_METHODS]

    def queryset(self, request: HttpRequest, queryset: QuerySet[Route]) -> QuerySet[Route]:
        if self.value() in HTTP_METHODS:
            # Text match on the JSON list: works on PostgreSQL and SQLite alike.
            return queryset.filter(methods__icontains=f'"{self.value()}"')
        return queryset


@admin.register(Route)
class RouteAdmin(admin.ModelAdmin):
    form = RouteForm
    # Seven columns that fit 1 400 px beside the admin's navigation: access and the upstream
    # options are folded into one column each, the pattern is cut (full one on hover).
    list_display = ["pattern", "method_list", "service", "access", "options", "enabled", "updated_at"]
    list_display_links = ["pattern"]
    list_filter = ["enabled", "auth_required", "idempotency", MethodListFilter, "service"]
    search_fields = ["path", "service__name", "required_permission", "rewrite"]
    list_select_related = ["service"]
    autocomplete_fields = ["service"]
    actions = ["enable_routes", "disable_routes", "flush_response_cache"]
    fieldsets = [
        (None, {"fields": ["methods", "path", "service", "rewrite", "priority", "enabled"]}),
        ("Access", {"fields": ["auth_required", "required_permission", "condition"]}),
        ("Upstream", {"fields": ["timeout_ms", "retry_count", "idempotency", "cache_ttl_seconds"]}),
        ("Policies", {"fields": ["policies"], "description": "docs/gateway-policies.md"}),
    ]

    @admin.display(description="methods")
    def method_list(self, obj: Route) -> str:
        if set(obj.methods or []) >= set(HTTP_METHODS):
            return "any"
        return " ".join(obj.methods or [])

    @admin.display(description="path pattern", ordering="path")
    def pattern(self, obj: Route) -> str:
        return truncated(obj.path)

    @admin.display(description="access", ordering="auth_required")
    def access(self, obj: Route) -> str:
        if not obj.auth_required:
            return "public"
        return f"token · {obj.required_permission}" if obj.required_permission else "token"

    @admin.display(description="options")
    def options(self, obj: Route) -> str:
        parts = []
        if obj.cache_ttl_seconds:
            parts.append(f"cache {obj.cache_ttl_seconds} s")
        if obj.idempotency != Route.Idempotency.OFF:
            parts.append(f"idempotency {obj.idempotency}")
        if obj.priority:
            parts.append(f"priority {obj.priority}")
        return " · ".join(parts) or "–"

    def save_model(self, request: HttpRequest, obj: Route, form: Any, change: bool) -> None:
        route_save(route=obj)

    def delete_model(self, request: HttpRequest, obj: Route) -> None:
        route_delete(route=obj)

    def delete_queryset(self, request: HttpRequest, queryset: QuerySet[Route]) -> None:
        routes_delete(routes=queryset)

    @admin.action(description="Enable selected routes")
    def enable_routes(self, request: HttpRequest, queryset: QuerySet[Route]) -> None:
        count, refused = routes_set_enabled(routes=queryset, enabled=True)
        self.message_user(request, f"{count} route(s) enabled.", messages.SUCCESS)
        for reason in refused:
            self.message_user(request, f"Not enabled: {reason}", messages.WARNING)

    @admin.action(description="Disable selected routes")
    def disable_routes(self, request: HttpRequest, queryset: QuerySet[Route]) -> None:
        count, _ = routes_set_enabled(routes=queryset, enabled=False)
        self.message_user(request, f"{count} route(s) disabled.", messages.SUCCESS)

    @admin.action(description="Flush cached responses of selected routes")
    def flush_response_cache(self, request: HttpRequest, queryset: QuerySet[Route]) -> None:
        for route_id in queryset.values_list("pk", flat=True):
            response_cache_invalidate(route_id=route_id)
        self.message_user(request, "Cached responses flushed.", messages.SUCCESS)


@admin.register(RevokedToken)
class RevokedTokenAdmin(admin.ModelAdmin):
    """Revocations are made by `revoke_token` or the token service; admin shows and searches them."""

    list_display = ("jti", "expires_at", "created_at")
    search_fields = ("jti",)
    date_hierarchy = "created_at"
    readonly_fields = ("jti", "expires_at", "created_at")

    def has_add_permission(self, request) -> bool:  # type: ignore[no-untyped-def]
        return False

    def has_change_permission(self, request, obj=None) -> bool:  # type: ignore[no-untyped-def]
        return False
