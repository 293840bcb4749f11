from __future__ import annotations

from typing import Any

from django.contrib import admin, messages
from django.contrib.admin.actions import delete_selected
from django.db.models import QuerySet
from django.http import HttpRequest, HttpResponse

from adminsite.display import short_id
from adminsite.readonly import ReadOnlyChangeMixin
from outbox.models import OutboxDeliveryAttempt, OutboxEvent
from outbox.services import outbox_replay

PENDING_NOT_DELETABLE = (
    "Pending events cannot be deleted: the relay has not delivered them yet, so deleting one "
    "would lose it for good. Only published or dead events can be deleted."
)


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
class OutboxEventAdmin(ReadOnlyChangeMixin, admin.ModelAdmin):
    inlines = (OutboxDeliveryAttemptInline,)
    list_display = (
        "sequence",
        "type",
        "aggregatetype",
        "short_aggregateid",
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

    @admin.display(description="aggregate id", ordering="aggregateid")
    def short_aggregateid(self, obj: OutboxEvent) -> str:
        return short_id(obj.aggregateid)

    def has_delete_permission(self, request: HttpRequest, obj: OutboxEvent | None = None) -> bool:
        if obj is not None and obj.status == OutboxEvent.Status.PENDING:
            return False  # PENDING_NOT_DELETABLE
        return super().has_delete_permission(request, obj)

    def get_actions(self, request: HttpRequest) -> dict[str, Any]:
        actions = super().get_actions(request)
        if "delete_selected" in actions:  # same name: the stock confirmation page posts it back
            actions["delete_selected"] = (
                type(self).delete_finished_events,
                "delete_selected",
                "Delete selected published or dead events",
            )
        return actions

    def change_view(
        self,
        request: HttpRequest,
        object_id: str,
        form_url: str = "",
        extra_context: dict[str, Any] | None = None,
    ) -> HttpResponse:
        event = self.get_object(request, object_id)
        if request.method == "GET" and event is not None and event.status == OutboxEvent.Status.PENDING:
            self.message_user(request, PENDING_NOT_DELETABLE, messages.INFO)
        return super().change_view(request, object_id, form_url, extra_context)

    def delete_finished_events(self, request: HttpRequest, queryset: QuerySet[OutboxEvent]) -> Any:
        pending = queryset.filter(status=OutboxEvent.Status.PENDING).count()
        if pending:
            message = f"Nothing deleted: {pending} selected event(s) are pending. {PENDING_NOT_DELETABLE}"
            self.message_user(request, message, messages.ERROR)
            return None
        return delete_selected(self, request, queryset)  # the stock confirmation page

    def delete_queryset(self, request: HttpRequest, queryset: QuerySet[OutboxEvent]) -> None:
        # Re-checked in the DELETE itself: an event replayed since the confirmation is pending again.
        queryset.exclude(status=OutboxEvent.Status.PENDING).delete()

    @admin.action(description="Retry (re-send) selected dead events", permissions=["change"])
    def retry_events(self, request: HttpRequest, queryset: QuerySet[OutboxEvent]) -> None:
        ids = [str(pk) for pk in queryset.filter(status=OutboxEvent.Status.DEAD).values_list("pk", flat=True)]
        count = outbox_replay(ids=ids) if ids else 0
        level = messages.SUCCESS if count else messages.WARNING
        self.message_user(request, f"{count} dead events queued for retry.", level)
