from __future__ import annotations

from django.contrib import admin
from django.db.models import QuerySet
from django.http import HttpRequest

from adminsite.display import truncated
from idempotency.models import IdempotencyRecord


@admin.register(IdempotencyRecord)
class IdempotencyRecordAdmin(admin.ModelAdmin):
    """Read-only: records are written only by the idempotency services."""

    list_display = (
        "short_key",
        "short_scope",
        "method",
        "short_path",
        "status",
        "response_status",
        "created_at",
        "expires_at",
    )
    list_filter = ("status", "method")
    search_fields = ("key",)
    search_help_text = "Exact Idempotency-Key"
    # Newest first by the primary key: created_at has no index, so sorting on it (or a
    # date_hierarchy's MIN/MAX and DISTINCT date_trunc) reads the whole table on every page view.
    ordering = ("-id",)
    exclude = ("response_body",)
    readonly_fields = (
        "scope",
        "key",
        "method",
        "path",
        "request_hash",
        "status",
        "lock_token",
        "locked_at",
        "locked_until",
        "response_status",
        "response_body_preview",
        "response_content_type",
        "response_location",
        "response_stored",
        "created_at",
        "completed_at",
        "expires_at",
    )

    def get_queryset(self, request: HttpRequest) -> QuerySet:
        # Stored bodies reach 1 MiB each: a changelist page of 100 rows must not load them.
        # The detail page's preview reads the one body it shows.
        return super().get_queryset(request).defer("response_body")

    def get_search_results(self, request: HttpRequest, queryset: QuerySet, search_term: str):
        """Exact match on the key: served by the (key, scope) unique index, unlike icontains."""
        if not search_term:
            return queryset, False
        return queryset.filter(key=search_term.strip()), False

    @admin.display(description="key", ordering="key")
    def short_key(self, obj: IdempotencyRecord) -> str:
        return truncated(obj.key)

    @admin.display(description="scope", ordering="scope")
    def short_scope(self, obj: IdempotencyRecord) -> str:
        return truncated(obj.scope)

    @admin.display(description="path", ordering="path")
    def short_path(self, obj: IdempotencyRecord) -> str:
        return truncated(obj.path)

    @admin.display(description="Response body (first 2 KiB)")
    def response_body_preview(self, obj: IdempotencyRecord) -> str:
        body = bytes(obj.response_body or b"")
        return body[:2048].decode("utf-8", "replace")

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: IdempotencyRecord | None = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: IdempotencyRecord | None = None) -> bool:
        return False
