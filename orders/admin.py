"""Staff view of orders: search, filters, items inline, and actions that go through the services."""

from __future__ import annotations

from django.contrib import admin, messages
from django.db.models import QuerySet
from django.http import HttpRequest

from adminsite.display import short_id
from adminsite.readonly import ReadOnlyChangeMixin
from common.errors import ApplicationError
from orders import services
from orders.models import Order, OrderItem, ProcessedEvent


class OrderItemInline(admin.TabularInline):
    model = OrderItem
    extra = 0
    fields = ("sku", "name", "quantity", "unit_price")
    readonly_fields = fields
    can_delete = False

    def has_add_permission(self, request: HttpRequest, obj: Order | None = None) -> bool:
        return False


def _apply(
    modeladmin: admin.ModelAdmin, request: HttpRequest, queryset: QuerySet[Order], action: str, verb: str
) -> None:
    """Run a service per selected order; report successes and refusals (409s) separately."""
    done, refused = 0, []
    for order_id in queryset.order_by("pk").values_list("pk", flat=True):
        try:
            getattr(services, action)(order_id=order_id)
            done += 1
        except ApplicationError as exc:
            refused.append(f"{order_id}: {exc.detail}")
    if done:
        modeladmin.message_user(request, f"{verb} {done} order(s).", messages.SUCCESS)
    for message in refused[:20]:
        modeladmin.message_user(request, message, messages.WARNING)


@admin.register(Order)
class OrderAdmin(ReadOnlyChangeMixin, admin.ModelAdmin):
    list_display = (
        "short_order_id",
        "status",
        "user_id",
        "tenant_id",
        "total",
        "expiration_time",
        "created_at",
    )
    list_filter = (
        "status",
        "currency",
        "tenant_id",
        ("expiration_time", admin.DateFieldListFilter),
        "created_at",
    )
    search_fields = ("=id", "user_id", "tenant_id", "=store_id", "payment_reference", "contact_phone")
    date_hierarchy = "created_at"
    ordering = ("-created_at",)
    inlines = [OrderItemInline]
    list_per_page = 50
    show_full_result_count = False  # COUNT(*) over millions of orders on every page is slow
    # Status changes go through the services (compare-and-set + outbox event), never a form save.
    readonly_fields = (
        "id",
        "user_id",
        "tenant_id",
        "store_id",
        "total_amount",
        "currency",
        "status",
        "expiration_time",
        "payment_reference",
        "delivery_address",
        "contact_phone",
        "created_at",
        "updated_at",
        "placement_saga",
    )
    actions = ("cancel_orders", "expire_orders", "extend_expiration")

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False  # orders are created through the API (totals, events, idempotency)

    @admin.display(description="order", ordering="id")
    def short_order_id(self, obj: Order) -> str:
        return short_id(obj.pk)

    @admin.display(description="placement saga")
    def placement_saga(self, obj: Order) -> str:
        from django.urls import reverse
        from django.utils.html import format_html

        from sagas.models import SagaInstance

        saga = SagaInstance.objects.filter(saga_type="order.placement", reference=str(obj.pk)).first()
        if saga is None:
            return "—"
        url = reverse("admin:sagas_sagainstance_change", args=[saga.pk])
        return format_html('<a href="{}">{} ({})</a>', url, saga.id, saga.status)

    @admin.display(description="total", ordering="total_amount")
    def total(self, obj: Order) -> str:
        return f"{obj.total_amount} {obj.currency}"

    def has_delete_permission(self, request: HttpRequest, obj: Order | None = None) -> bool:
        return False  # an order's history is kept; cancel or expire it instead

    @admin.action(description="Cancel selected pending orders")
    def cancel_orders(self, request: HttpRequest, queryset: QuerySet[Order]) -> None:
        _apply(self, request, queryset, "order_cancel", "Cancelled")

    @admin.action(description="Expire selected pending orders now")
    def expire_orders(self, request: HttpRequest, queryset: QuerySet[Order]) -> None:
        _apply(self, request, queryset, "order_expire", "Expired")

    @admin.action(description="Extend expiration by one session (ORDER_SESSION_DURATION_MINUTES)")
    def extend_expiration(self, request: HttpRequest, queryset: QuerySet[Order]) -> None:
        _apply(self, request, queryset, "order_extend_expiration", "Extended")


@admin.register(ProcessedEvent)
class ProcessedEventAdmin(ReadOnlyChangeMixin, admin.ModelAdmin):
    list_display = ("short_event_id", "consumer_group_name", "outcome", "short_order_id", "processed_at")
    list_filter = ("consumer_group_name", "outcome")
    search_fields = ("=event_id", "=order_id")
    readonly_fields = ("event_id", "consumer_group_name", "outcome", "order_id", "processed_at")

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    @admin.display(description="event id", ordering="event_id")
    def short_event_id(self, obj: ProcessedEvent) -> str:
        return short_id(obj.event_id)

    @admin.display(description="order", ordering="order_id")
    def short_order_id(self, obj: ProcessedEvent) -> str:
        return short_id(obj.order_id)
