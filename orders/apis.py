"""REST endpoints of the order flow: one APIView per operation, validate → service → serialize."""

from __future__ import annotations

import re
from decimal import Decimal
from typing import Any

from django.utils import timezone
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, extend_schema, extend_schema_field
from rest_framework import serializers, status
from rest_framework.permissions import AllowAny
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from common.conditional import conditional_response
from common.errors import Unprocessable
from common.pagination import StrictLimitOffsetPagination
from common.serializer_fields import StrictCharField, StrictIntegerField, StrictRegexField, StrictUUIDField
from idempotency.decorators import idempotent
from orders import payments, selectors, services
from orders.errors import OrderNotFound
from orders.models import Order

E164_REGEX = r"^\+[1-9][0-9]{1,14}\Z"  # \Z: "$" would also match before a final newline
CURRENCY_REGEX = r"^[A-Z]{3}\Z"


MAX_ORDER_TOTAL = Decimal("9999999999.99")  # Order.total_amount: max_digits=12, decimal_places=2
MONEY_REGEX = r"^[0-9]{1,10}(\.[0-9]{1,2})?$"


@extend_schema_field({"type": "string", "format": "decimal", "pattern": MONEY_REGEX, "example": "10.00"})
class MoneyField(serializers.DecimalField):
    """A decimal string, at most 10 digits before the point and 2 after ("10.00"); JSON numbers,
    signs, exponents and surrounding spaces are refused so no amount passes through a float."""

    def __init__(self, **kwargs: Any) -> None:
        kwargs.setdefault("max_digits", 12)
        kwargs.setdefault("decimal_places", 2)
        kwargs.setdefault("min_value", Decimal("0"))
        super().__init__(**kwargs)

    def to_internal_value(self, data: Any) -> Decimal:
        if not isinstance(data, str) or not re.fullmatch(MONEY_REGEX.removesuffix("$"), data):
            raise serializers.ValidationError('Must be a decimal string such as "10.00".')
        return super().to_internal_value(data)


class OrderItemOutputSerializer(serializers.Serializer):
    sku = serializers.CharField()
    name = serializers.CharField()
    quantity = serializers.IntegerField()
    unit_price = serializers.DecimalField(max_digits=12, decimal_places=2)
    line_total = serializers.DecimalField(max_digits=14, decimal_places=2)


class SessionSerializer(serializers.Serializer):
    expires_at = serializers.DateTimeField()
    duration_minutes = serializers.IntegerField(help_text="The order's session length, extensions included.")


class OrderOutputSerializer(serializers.Serializer):
    id = serializers.UUIDField()
    status = serializers.ChoiceField(choices=Order.Status.choices)
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

    def to_representation(self, order: Order) -> dict[str, Any]:
        data = super().to_representation(order)
        # An overdue pending order reads as expired even before the sweep reaches it.
        data["status"] = order.status_at(self.context.get("now") or timezone.now())
        return data

    @extend_schema_field(SessionSerializer)
    def get_session(self, order: Order) -> dict[str, Any]:
        # The order's own session (extensions included), not today's ORDER_SESSION_DURATION_MINUTES.
        seconds = (order.expiration_time - order.created_at).total_seconds()
        return {
            "expires_at": serializers.DateTimeField().to_representation(order.expiration_time),
            "duration_minutes": round(seconds / 60),
        }


def _owner(request: Request) -> dict[str, str]:
    identity = request.user
    return {"user_id": identity.user_id, "tenant_id": identity.tenant_id or ""}


def _owner_key(request: Request) -> tuple[str, str]:
    owner = _owner(request)
    return owner["user_id"], owner["tenant_id"]


_IF_NONE_MATCH = OpenApiParameter(
    "If-None-Match", OpenApiTypes.STR, OpenApiParameter.HEADER, description="ETags of the client's copy."
)
_IF_MODIFIED_SINCE = OpenApiParameter(
    "If-Modified-Since", OpenApiTypes.STR, OpenApiParameter.HEADER, description="An HTTP date."
)
_NOT_MODIFIED = OpenApiResponse(description="Not modified: the client's copy (ETag / date) is current.")


class OrderCreateApi(APIView):
    class InputSerializer(serializers.Serializer):
        class ItemSerializer(serializers.Serializer):
            sku = StrictCharField(max_length=64)
            name = StrictCharField(max_length=255)
            quantity = StrictIntegerField(min_value=1, max_value=100_000)
            unit_price = MoneyField()

        store_id = StrictUUIDField()
        currency = StrictRegexField(CURRENCY_REGEX, error_messages={"invalid": "Must be an ISO 4217 code."})
        delivery_address = StrictCharField(max_length=2000)
        contact_phone = StrictRegexField(E164_REGEX, error_messages={"invalid": "Must be E.164."})
        items = serializers.ListField(child=ItemSerializer(), min_length=1, max_length=500)
        # total_amount is deliberately absent: the server computes it; a client's is ignored.

    OutputSerializer = OrderOutputSerializer

    # Key required; the decorator runs this in one transaction with the key's completion, so the
    # order, its order.created event and the stored response commit together.
    @extend_schema(
        operation_id="orders_create",
        description="Create an order in `pending_payment`; it expires unless paid within its session.",
        request=InputSerializer,
        responses={
            201: OrderOutputSerializer,
            422: OpenApiResponse(
                description="The order total exceeds 9999999999.99, or the Idempotency-Key was "
                "already used with a different request (when IDEMPOTENCY_MISMATCH_STATUS is 422)."
            ),
        },
    )
    @idempotent()
    def post(self, request: Request) -> Response:
        serializer = self.InputSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        data = serializer.validated_data
        if sum(item["quantity"] * item["unit_price"] for item in data["items"]) > MAX_ORDER_TOTAL:
            # Schema-valid field by field, refused as a whole: 422 (documented), not a 400.
            raise Unprocessable(
                f"The order total exceeds {MAX_ORDER_TOTAL}.",
                errors={"items": ["Total exceeds the maximum."]},
            )
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
    # Also read by drf-spectacular: the list is documented as the paginated envelope it is.
    pagination_class = StrictLimitOffsetPagination
    OutputSerializer = OrderOutputSerializer

    @extend_schema(
        operation_id="orders_list",
        description="The caller's orders, newest first, `limit`/`offset` paginated.",
        responses={200: OrderOutputSerializer(many=True), 304: _NOT_MODIFIED},
        parameters=[_IF_NONE_MATCH],
    )
    def get(self, request: Request) -> Response:
        orders = selectors.order_list_for_owner(**_owner(request))
        paginator = self.pagination_class()
        page = paginator.paginate_queryset(orders, request, view=self)
        serializer = self.OutputSerializer(page, many=True, context={"now": timezone.now()})
        envelope = paginator.get_paginated_response(serializer.data).data
        return conditional_response(request, data=envelope, owner=_owner_key(request))


class OrderDetailApi(APIView):
    OutputSerializer = OrderOutputSerializer

    @extend_schema(
        operation_id="orders_retrieve",
        description="One of the caller's orders.",
        responses={200: OrderOutputSerializer, 304: _NOT_MODIFIED},
        parameters=[_IF_NONE_MATCH, _IF_MODIFIED_SINCE],
    )
    def get(self, request: Request, order_id: str) -> Response:
        order = selectors.order_get_for_owner(order_id=order_id, **_owner(request))
        if order is None:
            raise OrderNotFound(f"Order {order_id} does not exist.")
        now = timezone.now()
        # An overdue pending order turned expired at its expiration time, without a write.
        changed = order.expiration_time if order.status_at(now) != order.status else order.updated_at
        data = self.OutputSerializer(order, context={"now": now}).data
        return conditional_response(
            request, data=data, owner=_owner_key(request), last_modified=max(changed, order.updated_at)
        )


class OrderCancelApi(APIView):
    OutputSerializer = OrderOutputSerializer

    @extend_schema(
        operation_id="orders_cancel",
        description="Cancel a pending order; 409 when it is paid, expired or cancelled already.",
        request=None,
        responses={200: OrderOutputSerializer, 409: OpenApiResponse(description="The order is not pending.")},
    )
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
        description="A payment provider's event, authenticated by `X-Signature` (HMAC of the raw body).",
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
