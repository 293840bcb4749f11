"""End to end through POST /api/orders on a real server: retries never create a second order."""

from __future__ import annotations

import json
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests

from idempotency.models import IdempotencyRecord
from orders.models import Order
from outbox.models import OutboxEvent

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]

ORDER = {
    "store_id": "7b0c6f1e-3d2a-4c55-9a0e-2f1d6f7e8a90",
    "currency": "USD",
    "delivery_address": "1 Main St, Springfield",
    "contact_phone": "+14155550100",
    "items": [{"sku": "SKU-1", "name": "Widget", "quantity": 2, "unit_price": "10.00"}],
}


def test_concurrent_order_retries_create_one_order_and_one_event(gateway_process_factory, token_service):
    server = gateway_process_factory(token_service.env)
    alice = {"Authorization": token_service.bearer(sub="alice", tenant_id="t-1")}
    bob = {"Authorization": token_service.bearer(sub="bob", tenant_id="t-1")}
    clients = 20
    barrier = threading.Barrier(clients)

    def one(_: int) -> requests.Response:
        barrier.wait(timeout=30)
        return requests.post(
            f"{server}/api/orders",
            data=json.dumps(ORDER),
            headers={"Content-Type": "application/json", "Idempotency-Key": "order-1", **alice},
            timeout=60,
        )

    with ThreadPoolExecutor(max_workers=clients) as pool:
        responses = list(pool.map(one, range(clients)))
    retry = requests.post(
        f"{server}/api/orders",
        data=json.dumps(ORDER),
        headers={"Content-Type": "application/json", "Idempotency-Key": "order-1", **alice},
        timeout=30,
    )
    other_user = requests.post(
        f"{server}/api/orders",
        data=json.dumps(ORDER),
        headers={"Content-Type": "application/json", "Idempotency-Key": "order-1", **bob},
        timeout=30,
    )

    created = [r for r in responses if r.status_code == 201]
    assert {r.status_code for r in responses} <= {201, 409}, [r.status_code for r in responses]
    for response in responses:
        if response.status_code == 409:  # a retry that arrived while the first still ran
            assert response.json()["type"].endswith("/idempotency-in-progress"), response.content
            assert int(response.headers["Retry-After"]) >= 1
    assert len({r.content for r in created}) == 1
    assert retry.status_code == 201
    assert retry.headers["Idempotent-Replayed"] == "true"
    assert retry.content == created[0].content
    assert retry.headers["Location"] == created[0].headers["Location"]
    assert other_user.status_code == 201
    assert "Idempotent-Replayed" not in other_user.headers
    assert Order.objects.filter(user_id="alice").count() == 1
    assert Order.objects.filter(user_id="bob").count() == 1
    assert OutboxEvent.objects.filter(type="order.created").count() == 2
    assert IdempotencyRecord.objects.filter(status="completed").count() == 2
