"""POST/GET /api/orders and cancel, through the HTTP API with real Bearer tokens."""

from __future__ import annotations

import uuid
from datetime import timedelta

import pytest
from django.utils import timezone
from freezegun import freeze_time

from orders.models import Order, OrderItem, OrderStatus
from outbox.models import OutboxEvent
from tests.orders.factories import OrderFactory
from tests.support.servers import free_port

pytestmark = pytest.mark.django_db

VALID = {
    "store_id": "7b0c6f1e-3d2a-4c55-9a0e-2f1d6f7e8a90",
    "currency": "USD",
    "delivery_address": "1 Main St, Springfield",
    "contact_phone": "+14155550100",
    "items": [
        {"sku": "SKU-1", "name": "Widget", "quantity": 2, "unit_price": "10.00"},
        {"sku": "SKU-2", "name": "Gadget", "quantity": 3, "unit_price": "0.35"},
    ],
}


@pytest.fixture
def api(client, token_service):
    """HTTP calls as user u1 of tenant t1 (or another identity)."""

    class Api:
        def __init__(self, sub: str = "u1", tenant_id: str = "t1") -> None:
            self.sub, self.tenant_id = sub, tenant_id

        @property
        def auth(self) -> dict[str, str]:
            # Minted per call so a frozen clock sees a token valid at its own "now".
            return token_service.auth_header(sub=self.sub, tenant_id=self.tenant_id)

        def create(self, body: dict, key: str | None = "key-1", **headers: str):
            if key is not None:
                headers["HTTP_IDEMPOTENCY_KEY"] = key
            return client.post(
                "/api/orders", data=body, content_type="application/json", **self.auth, **headers
            )

        def get(self, path: str):
            return client.get(path, **self.auth)

        def post(self, path: str):
            return client.post(path, **self.auth)

        def as_(self, sub: str, tenant_id: str = "t1") -> Api:
            return Api(sub, tenant_id)

    return Api()


def test_create_computes_totals_and_writes_order_created(api):
    with freeze_time("2026-03-01 12:00:00"):
        response = api.create({**VALID, "total_amount": "0.01"})  # a client's total is ignored

    assert response.status_code == 201, response.content
    body = response.json()
    assert response["Location"] == f"/api/orders/{body['id']}"
    assert body["status"] == "pending_payment"
    assert body["total_amount"] == "21.05"
    assert body["currency"] == "USD"
    assert [(i["sku"], i["quantity"], i["unit_price"], i["line_total"]) for i in body["items"]] == [
        ("SKU-1", 2, "10.00", "20.00"),
        ("SKU-2", 3, "0.35", "1.05"),
    ]
    assert body["expiration_time"] == "2026-03-01T12:15:00Z"
    assert body["session"] == {"expires_at": "2026-03-01T12:15:00Z", "duration_minutes": 15}
    order = Order.objects.get(pk=body["id"])
    assert (order.user_id, order.tenant_id, str(order.total_amount)) == ("u1", "t1", "21.05")
    [event] = OutboxEvent.objects.filter(aggregateid=body["id"])
    assert event.type == "order.created"
    assert event.aggregatetype == "order"
    assert event.payload["status"] == "pending_payment"
    assert event.payload["total_amount"] == "21.05"
    assert len(event.payload["items"]) == 2


def test_session_duration_comes_from_the_setting(api, settings):
    settings.ORDER_SESSION_DURATION_MINUTES = 30
    with freeze_time("2026-03-01 12:00:00"):
        body = api.create(VALID).json()

    assert body["expiration_time"] == "2026-03-01T12:30:00Z"
    assert body["session"]["duration_minutes"] == 30


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"items": []}, "items"),
        ({"items": [{"sku": "A", "name": "A", "quantity": -1, "unit_price": "1.00"}]}, "items"),
        ({"items": [{"sku": "A", "name": "A", "quantity": 0, "unit_price": "1.00"}]}, "items"),
        ({"items": [{"sku": "A", "name": "A", "quantity": 1, "unit_price": "-1.00"}]}, "items"),
        ({"items": [{"sku": "A", "name": "A", "quantity": 1, "unit_price": "1.001"}]}, "items"),
        ({"items": [{"sku": "A", "name": "A", "quantity": 1, "unit_price": 1.1}]}, "items"),
        ({"currency": "usd"}, "currency"),
        ({"currency": "US"}, "currency"),
        ({"contact_phone": "4155550100"}, "contact_phone"),
        ({"store_id": "not-a-uuid"}, "store_id"),
        ({"delivery_address": ""}, "delivery_address"),
    ],
    ids=[
        "empty-items",
        "negative-qty",
        "zero-qty",
        "negative-price",
        "three-dp",
        "float-price",
        "lower-currency",
        "short-currency",
        "phone-not-e164",
        "bad-store",
        "no-address",
    ],
)
def test_invalid_order_is_400_problem_with_field_errors(api, change, field):
    response = api.create({**VALID, **change})

    assert response.status_code == 400
    assert response["Content-Type"] == "application/problem+json"
    assert field in response.json()["errors"]
    assert Order.objects.count() == 0
    assert OutboxEvent.objects.count() == 0


def test_create_without_idempotency_key_is_400(api):
    response = api.create(VALID, key=None)

    assert response.status_code == 400
    assert response["Content-Type"] == "application/problem+json"
    assert Order.objects.count() == 0


def test_replay_with_the_same_key_returns_the_same_order(api):
    first = api.create(VALID, key="order-abc")

    second = api.create(VALID, key="order-abc")

    assert first.status_code == second.status_code == 201
    assert second.content == first.content
    assert second["Idempotent-Replayed"] == "true"
    assert Order.objects.count() == 1
    assert OutboxEvent.objects.filter(type="order.created").count() == 1


@pytest.fixture
def celery_broker_down(monkeypatch):
    """The Celery broker is a closed port, and the relay nudge is not paused or debounced, so
    the commit really tries to reach it."""
    from config.celery import app as celery_app
    from outbox.services import _NudgeState

    def reset() -> None:
        _NudgeState.paused_until = 0.0
        _NudgeState.last_immediate_at = _NudgeState.trailing_runs_at = float("-inf")
        celery_app._pool = None
        celery_app.amqp._producer_pool = None

    # Celery reads CELERY_BROKER_URL from the environment before its configuration.
    monkeypatch.setenv("CELERY_BROKER_URL", f"amqp://guest:guest@127.0.0.1:{free_port()}//")
    reset()
    yield
    monkeypatch.undo()
    reset()


@pytest.mark.django_db(transaction=True)  # real commits: the nudge runs on commit
def test_create_commits_the_order_and_its_event_when_the_celery_broker_is_down(
    api, celery_broker_down, caplog
):
    response = api.create(VALID, key="order-broker-down")

    assert response.status_code == 201, response.content
    order = Order.objects.get(pk=response.json()["id"])
    assert order.status == OrderStatus.PENDING_PAYMENT
    [event] = OutboxEvent.objects.filter(aggregateid=str(order.id))
    assert (event.type, event.status) == ("order.created", OutboxEvent.Status.PENDING)
    # the commit did try the broker, and the beat entry is left to relay the event
    assert "outbox relay nudge not sent" in caplog.text


def test_same_key_other_body_is_409(api):
    api.create(VALID, key="order-abc")

    response = api.create({**VALID, "currency": "EUR"}, key="order-abc")

    assert response.status_code == 409
    assert Order.objects.count() == 1


def test_without_token_is_401_with_challenge(client):
    response = client.post(
        "/api/orders", data=VALID, content_type="application/json", HTTP_IDEMPOTENCY_KEY="k"
    )

    assert response.status_code == 401
    assert response["WWW-Authenticate"].startswith("Bearer")
    assert response["Content-Type"] == "application/problem+json"
    assert client.get("/api/orders").status_code == 401


def test_list_shows_only_own_orders_paginated(api):
    mine = [OrderFactory(user_id="u1", tenant_id="t1") for _ in range(3)]
    OrderFactory(user_id="u2", tenant_id="t1")
    OrderFactory(user_id="u1", tenant_id="t2")  # same user id, other tenant

    page = api.get("/api/orders?limit=2").json()
    rest = api.get("/api/orders?limit=2&offset=2").json()

    assert page["count"] == 3
    assert len(page["results"]) == 2
    assert page["next"]
    ids = {o["id"] for o in page["results"] + rest["results"]}
    assert ids == {str(o.id) for o in mine}


def test_detail_of_own_order(api):
    order = OrderFactory(user_id="u1", tenant_id="t1")

    response = api.get(f"/api/orders/{order.id}")

    assert response.status_code == 200
    assert response.json()["id"] == str(order.id)
    assert response.json()["items"][0]["quantity"] == 2


@pytest.mark.parametrize("owner", [("u2", "t1"), ("u1", "t2")], ids=["other-user", "other-tenant"])
def test_someone_elses_order_is_404(api, owner):
    order = OrderFactory(user_id=owner[0], tenant_id=owner[1])

    assert api.get(f"/api/orders/{order.id}").status_code == 404
    response = api.post(f"/api/orders/{order.id}/cancel")
    assert response.status_code == 404
    assert response["Content-Type"] == "application/problem+json"
    order.refresh_from_db()
    assert order.status == OrderStatus.PENDING_PAYMENT


def test_unknown_or_malformed_order_id_is_404(api):
    assert api.get(f"/api/orders/{uuid.uuid4()}").status_code == 404
    assert api.get("/api/orders/not-a-uuid").status_code == 404


def test_overdue_pending_order_reads_as_expired_before_the_sweep(api):
    with freeze_time("2026-03-01 12:00:00"):
        order_id = api.create(VALID).json()["id"]
    with freeze_time("2026-03-01 12:15:00"):
        detail = api.get(f"/api/orders/{order_id}").json()
        listed = api.get("/api/orders").json()["results"][0]

    assert detail["status"] == listed["status"] == "expired"
    assert Order.objects.get(pk=order_id).status == OrderStatus.PENDING_PAYMENT  # not swept yet


def test_cancel_pending_order(api):
    order = OrderFactory()

    response = api.post(f"/api/orders/{order.id}/cancel")

    assert response.status_code == 200
    assert response.json()["status"] == "cancelled"
    order.refresh_from_db()
    assert order.status == OrderStatus.CANCELLED
    [event] = OutboxEvent.objects.filter(aggregateid=str(order.id))
    assert (event.type, event.payload["status"]) == ("order.cancelled", "cancelled")


@pytest.mark.parametrize("status", [OrderStatus.PAID, OrderStatus.CANCELLED, OrderStatus.EXPIRED])
def test_cancel_is_409_unless_pending(api, status):
    order = OrderFactory(status=status)

    response = api.post(f"/api/orders/{order.id}/cancel")

    assert response.status_code == 409
    assert response["Content-Type"] == "application/problem+json"
    order.refresh_from_db()
    assert order.status == status
    assert not OutboxEvent.objects.filter(type="order.cancelled").exists()


def test_cancel_of_overdue_pending_order_is_409(api):
    order = OrderFactory(expiration_time=timezone.now() - timedelta(seconds=1))

    assert api.post(f"/api/orders/{order.id}/cancel").status_code == 409


def test_database_refuses_invalid_items():
    order = OrderFactory()
    from django.db import IntegrityError, transaction

    for quantity, price in [(0, "1.00"), (1, "-0.01")]:
        with pytest.raises(IntegrityError), transaction.atomic():
            OrderItem.objects.create(order=order, sku="X", name="X", quantity=quantity, unit_price=price)
    with pytest.raises(IntegrityError), transaction.atomic():
        OrderFactory(currency="usd")
