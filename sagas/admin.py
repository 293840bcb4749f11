"""Sagas in admin: filter by type and status, steps inline as a timeline (start, finish,
duration, attempts, error), actions resume and compensate (through the services)."""

from __future__ import annotations

from django.contrib import admin, messages
from django.db.models import QuerySet
from django.http import HttpRequest
from django.urls import reverse
from django.utils.html import format_html

from adminsite.display import short_id
from adminsite.readonly import ReadOnlyChangeMixin
from common.errors import ApplicationError
from sagas.models import SagaInstance, SagaStep
from sagas.services import saga_compensate, saga_resume


class SagaStepInline(admin.TabularInline):
    model = SagaStep
    extra = 0
    fields = ("kind", "name", "status", "attempts", "started_at", "finished_at", "duration", "last_error")
    readonly_fields = fields
    can_delete = False
    ordering = ("id",)  # the order steps were created and run in: the saga's timeline

    def has_add_permission(self, request: HttpRequest, obj: SagaInstance | None = None) -> bool:
        return False

    @admin.display(description="last attempt")
    def duration(self, obj: SagaStep) -> str:
        return "" if obj.duration_ms is None else f"{obj.duration_ms:.1f} ms"


@admin.register(SagaInstance)
class SagaInstanceAdmin(ReadOnlyChangeMixin, admin.ModelAdmin):
    inlines = (SagaStepInline,)
    list_display = (
        "short_saga_id",
        "saga_type",
        "status",
        "current_step",
        "reason",
        "subject",
        "created_at",
        "updated_at",
    )
    list_filter = ("saga_type", "status")
    search_fields = ("=id", "=reference", "=correlation_id")
    ordering = ("-created_at",)
    show_full_result_count = False
    readonly_fields = [field.name for field in SagaInstance._meta.fields] + ["subject"]
    actions = ("resume_sagas", "compensate_sagas")

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False  # sagas are started by the business transactions

    def has_delete_permission(self, request: HttpRequest, obj: SagaInstance | None = None) -> bool:
        return False

    @admin.display(description="saga", ordering="id")
    def short_saga_id(self, obj: SagaInstance) -> str:
        return short_id(obj.pk)

    @admin.display(description="subject")
    def subject(self, obj: SagaInstance) -> str:
        if obj.saga_type == "order.placement" and obj.reference:
            url = reverse("admin:orders_order_change", args=[obj.reference])
            return format_html('<a href="{}">order {}</a>', url, short_id(obj.reference))
        return obj.reference

    def _each(self, request: HttpRequest, queryset: QuerySet[SagaInstance], call, verb: str) -> None:  # type: ignore[no-untyped-def]
        done, refused = 0, []
        for saga_id in queryset.values_list("pk", flat=True):
            try:
                call(saga_id=saga_id)
                done += 1
            except ApplicationError as exc:
                refused.append(exc.detail)
        if done:
            self.message_user(request, f"{verb} {done} saga(s).", messages.SUCCESS)
        for detail in refused:
            self.message_user(request, detail, messages.WARNING)

    @admin.action(description="Resume selected sagas")
    def resume_sagas(self, request: HttpRequest, queryset: QuerySet[SagaInstance]) -> None:
        self._each(request, queryset, saga_resume, "Resumed")

    @admin.action(description="Compensate selected running sagas")
    def compensate_sagas(self, request: HttpRequest, queryset: QuerySet[SagaInstance]) -> None:
        self._each(
            request,
            queryset,
            lambda saga_id: saga_compensate(saga_id=saga_id, reason="operator"),
            "Compensating",
        )
