"""Order-flow helpers: signing payment events the way the provider does."""

from __future__ import annotations

import hashlib
import hmac
import json
from typing import Any

import pytest
from django.conf import settings


def sign(body: bytes, secret: str | None = None) -> str:
    key = (secret if secret is not None else settings.PAYMENT_WEBHOOK_SECRET).encode()
    return "sha256=" + hmac.new(key, body, hashlib.sha256).hexdigest()


def payment_body(
    order: Any, *, event_id: str = "evt-1", type: str = "payment.success", **overrides: Any
) -> bytes:
    event = {
        "event_id": event_id,
        "type": type,
        "order_id": str(order.id),
        "amount": str(order.total_amount),
        "currency": order.currency,
        "provider_reference": f"psp-{event_id}",
        **overrides,
    }
    return json.dumps(event).encode()


@pytest.fixture
def post_payment_event(client):
    def post(body: bytes, *, signature: str | None = "auto"):
        headers = {}
        if signature == "auto":
            headers["HTTP_X_SIGNATURE"] = sign(body)
        elif signature is not None:
            headers["HTTP_X_SIGNATURE"] = signature
        return client.post("/api/payments/events", data=body, content_type="application/json", **headers)

    return post
