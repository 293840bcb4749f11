"""REST endpoints of the order flow: one APIView per operation, validate → service → serialize."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from django.conf import settings
from django.utils import timezone
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import serializers, status
from rest_framework.pagination import LimitOffsetPagination
from rest_framework.permissions import AllowAny
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from idempotency.decorators import idempotent
from orders import payments, selectors, services
from orders.errors import OrderNotFound
from orders.models import Order

E164_REGEX = r"^\+[1-9][0-9]{1,14}$"
CURRENCY_REGEX = r"^[A-Z]{3}$"


class MoneyField(serializers.DecimalField):
    """A decimal string with at most 2 decimal places ("10.00"); JSON numbers are refused so
    no amount ever passes through a binary float."""

    def __init__(self, **kwargs: Any) -> None:
        kwargs.setdefault("max_digits", 12)
        kwargs.setdefault("decimal_places", 2)
        kwargs.setdefault("min_value", Decimal("0"))
        super().__init__(**kwargs)

    def to_internal_value(self, data: Any) -> Decimal:
        if not isinstance(data, str):
            raise serializers.ValidationError('Must be a decimal string such as "10.00".')
        return super().to_internal_value(data)


class OrderItemOutputSerializer(serializers.Serializer):
    sku = serializers.CharField()
    name = serializers.CharField()
    quantity = serializers.IntegerField()
    unit_price = serializers.DecimalField(max_digits=12, decimal_places=2)
    line_total = serializers.DecimalField(max_digits=14, decimal_places=2)


class OrderOutputSerializer(serializers.Serializer):
    id = serializers.UUIDField()
    status = serializers.SerializerMethodField()
    store_id = serializers.UUIDField()
    items = OrderItemOutputSerializer(many=True, source="items.all")
    total_amount = serializers.DecimalField(max_digits=12, decimal_places=2)
    currency = serializers.CharField()
    delivery_address = serializers.CharField()
    contact_phone = serializers.CharField()
    expiration_time = serializers.DateTimeField()
    payment_reference = serializers.CharField()
    created_at = serializers.DateTimeField()
    updated_at = serializers.DateTimeField()
    session = serializers.SerializerMethodField()

    def get_status(self, order: Order) -> str:
        # An overdue pending order reads as expired even before the sweep reaches it.
        return order.status_at(self.context.get("now") or timezone.now())

    def get_session(self, order: Order) -> dict[str, Any]:
        return {
            "expires_at": serializers.DateTimeField().to_representation(order.expiration_time),
            "duration_minutes": settings.ORDER_SESSION_DURATION_MINUTES,
        }


def _owner(request: Request) -> dict[str, str]:
    identity = request.user
    return {"user_id": identity.user_id, "tenant_id": identity.tenant_id or ""}


class OrderCreateApi(APIView):
    class InputSerializer(serializers.Serializer):
        class ItemSerializer(serializers.Serializer):
            sku = serializers.CharField(max_length=64)
            name = serializers.CharField(max_length=255)
            quantity = serializers.IntegerField(min_value=1, max_value=100_000)
            unit_price = MoneyField()

        store_id = serializers.UUIDField()
        currency = serializers.RegexField(
            CURRENCY_REGEX, error_messages={"invalid": "Must be an ISO 4217 code."}
        )
        delivery_address = serializers.CharField(max_length=2000)
        contact_phone = serializers.RegexField(E164_REGEX, error_messages={"invalid": "Must be E.164."})
        items = ItemSerializer(many=True, allow_empty=False, max_length=500)
        # total_amount is deliberately absent: the server computes it; a client's is ignored.

    OutputSerializer = OrderOutputSerializer

    # Key required; the decorator runs this in one transaction with the key's completion, so the
    # order, its order.created event and the stored response commit together.
    @extend_schema(
        operation_id="orders_create",
        request=InputSerializer,
        responses={201: OrderOutputSerializer},
        parameters=[
            OpenApiParameter("Idempotency-Key", OpenApiTypes.STR, OpenApiParameter.HEADER, required=True)
        ],
    )
    @idempotent()
    def post(self, request: Request) -> Response:
        serializer = self.InputSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        data = serializer.validated_data
        order = services.order_create(
            **_owner(request),
            store_id=data["store_id"],
            currency=data["currency"],
            delivery_address=data["delivery_address"],
            contact_phone=data["contact_phone"],
            items=[services.OrderItemData(**item) for item in data["items"]],
        )
        return Response(
            self.OutputSerializer(order).data,
            status=status.HTTP_201_CREATED,
            headers={"Location": f"/api/orders/{order.id}"},
        )


class OrderListApi(APIView):
    class Pagination(LimitOffsetPagination):
        default_limit = 50
        max_limit = 200

    OutputSerializer = OrderOutputSerializer

    @extend_schema(operation_id="orders_list", responses={200: OrderOutputSerializer(many=True)})
    def get(self, request: Request) -> Response:
        orders = selectors.order_list_for_owner(**_owner(request))
        paginator = self.Pagination()
        page = paginator.paginate_queryset(orders, request, view=self)
        serializer = self.OutputSerializer(page, many=True, context={"now": timezone.now()})
        return paginator.get_paginated_response(serializer.data)


class OrderDetailApi(APIView):
    OutputSerializer = OrderOutputSerializer

    @extend_schema(operation_id="orders_retrieve", responses={200: OrderOutputSerializer})
    def get(self, request: Request, order_id: str) -> Response:
        order = selectors.order_get_for_owner(order_id=order_id, **_owner(request))
        if order is None:
            raise OrderNotFound(f"Order {order_id} does not exist.")
        return Response(self.OutputSerializer(order).data)


class OrderCancelApi(APIView):
    OutputSerializer = OrderOutputSerializer

    @extend_schema(operation_id="orders_cancel", request=None, responses={200: OrderOutputSerializer})
    def post(self, request: Request, order_id: str) -> Response:
        order = services.order_cancel(order_id=order_id, **_owner(request))
        return Response(self.OutputSerializer(order).data)


class PaymentEventApi(APIView):
    """Payment provider callbacks, authenticated by an HMAC of the raw body (no bearer token)."""

    authentication_classes: list = []
    permission_classes = [AllowAny]

    class OutputSerializer(serializers.Serializer):
        event_id = serializers.CharField()
        order_id = serializers.UUIDField()
        outcome = serializers.CharField()
        order_status = serializers.CharField()
        duplicate = serializers.BooleanField()

    @extend_schema(
        operation_id="payment_events_create",
        # The body the one shared parser (orders/payments.py) accepts, field by field.
        request=payments.PaymentEventSerializer,
        responses={200: OutputSerializer},
        parameters=[
            OpenApiParameter("X-Signature", OpenApiTypes.STR, OpenApiParameter.HEADER, required=True),
            OpenApiParameter("Idempotency-Key", OpenApiTypes.STR, OpenApiParameter.HEADER),
        ],
    )
    def post(self, request: Request) -> Response:
        # The signature covers the bytes as sent: verify before anything parses them, and before
        # an Idempotency-Key is claimed (an unsigned request must not be able to burn a key).
        payments.payment_signature_verify(body=request.body, signature=request.headers.get("X-Signature"))
        return self._handle_verified(request)

    # Optional key (SPEC §4): processed_events already makes the event itself exactly-once.
    @idempotent(required=False)
    def _handle_verified(self, request: Request) -> Response:
        event = payments.payment_event_parse(body=request.body)
        result = payments.payment_event_handle(event=event, channel="http")
        return Response(self.OutputSerializer(result).data, status=status.HTTP_200_OK)


class OrderCollectionApi(OrderCreateApi, OrderListApi):
    """`/api/orders` serves two operations (POST create, GET list); each keeps its own view class."""
