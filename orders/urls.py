from django.urls import path

from orders import apis

app_name = "orders"
urlpatterns = [
    path("orders", apis.OrderCollectionApi.as_view(), name="order-list"),
    path("orders/<uuid:order_id>", apis.OrderDetailApi.as_view(), name="order-detail"),
    path("orders/<uuid:order_id>/cancel", apis.OrderCancelApi.as_view(), name="order-cancel"),
    path("payments/events", apis.PaymentEventApi.as_view(), name="payment-events"),
]
