from __future__ import annotations

from django.contrib import admin, messages
from django.db.models import QuerySet
from django.http import HttpRequest

from outbox.models import OutboxDeliveryAttempt, OutboxEvent
from outbox.services import outbox_replay


class OutboxDeliveryAttemptInline(admin.TabularInline):
    """Every delivery attempt of the event: when, attempt number, outcome, duration, error."""

    model = OutboxDeliveryAttempt
    extra = 0
    fields = ("attempt_number", "created_at", "status", "duration_ms", "error")
    readonly_fields = fields
    can_delete = False
    ordering = ("attempt_number", "id")

    def has_add_permission(self, request: HttpRequest, obj: OutboxEvent | None = None) -> bool:
        return False


@admin.register(OutboxEvent)
class OutboxEventAdmin(admin.ModelAdmin):
    inlines = (OutboxDeliveryAttemptInline,)
    list_display = (
        "sequence",
        "type",
        "aggregatetype",
        "aggregateid",
        "status",
        "attempts",
        "created_at",
        "published_at",
    )
    list_filter = ("status", "type", "aggregatetype")
    search_fields = ("=aggregateid", "=id")
    ordering = ("-sequence",)
    show_full_result_count = False  # COUNT(*) over a large outbox on every page is wasteful
    actions = ("retry_events",)
    readonly_fields = [field.name for field in OutboxEvent._meta.fields]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False  # events are written by business transactions only

    @admin.action(description="Retry (re-send) selected dead events", permissions=["change"])
    def retry_events(self, request: HttpRequest, queryset: QuerySet[OutboxEvent]) -> None:
        ids = [str(pk) for pk in queryset.filter(status=OutboxEvent.Status.DEAD).values_list("pk", flat=True)]
        count = outbox_replay(ids=ids) if ids else 0
        level = messages.SUCCESS if count else messages.WARNING
        self.message_user(request, f"{count} dead events queued for retry.", level)
