"""The order API takes JSON types as they are and refuses hostile bodies with a 400 problem."""
# ruff: noqa: F811  (the api fixture is imported from test_order_api)

from __future__ import annotations

import copy

import pytest

from orders.models import Order
from tests.orders.test_order_api import VALID, api  # noqa: F401, F811  (fixture)

pytestmark = pytest.mark.django_db


def _with(path: tuple, value) -> dict:
    body = copy.deepcopy(VALID)
    target = body
    for part in path[:-1]:
        target = target[part]
    target[path[-1]] = value
    return body


@pytest.mark.parametrize(
    ("path", "value"),
    [
        (("store_id",), 5),
        (("store_id",), 7.0),
        (("items", 0, "quantity"), "2"),
        (("items", 0, "quantity"), 2.0),
        (("items", 0, "quantity"), True),
        (("items", 0, "quantity"), 0),
        (("items", 0, "quantity"), 100_001),
        (("items", 0, "unit_price"), 10),
        (("items", 0, "unit_price"), 10.5),
        (("items", 0, "unit_price"), " 10.00 "),
        (("items", 0, "unit_price"), "1e3"),
        (("items", 0, "unit_price"), "-1.00"),
        (("items", 0, "sku"), 5),
        (("items", 0, "sku"), "   "),
        (("items", 0, "sku"), "x" * 65),
        (("delivery_address",), 12),
        (("delivery_address",), "a" * 2001),
        (("currency",), "USD\n"),
        (("contact_phone",), 14155550100),
        (("contact_phone",), "+14155550100\n"),
        (("items",), []),
    ],
)
def test_wrong_json_types_are_400_and_create_nothing(api, path, value):
    response = api.create(_with(path, value))

    assert response.status_code == 400, response.content
    assert response["Content-Type"] == "application/problem+json"
    assert response.json()["errors"]
    assert not Order.objects.exists()


def test_order_total_beyond_the_column_is_422(api):
    body = _with(("items",), [{"sku": "S", "name": "N", "quantity": 100_000, "unit_price": "9999999999.99"}])

    response = api.create(body)

    assert response.status_code == 422
    assert response["Content-Type"] == "application/problem+json"
    assert not Order.objects.exists()


@pytest.mark.parametrize(
    "raw",
    [
        b"[" * 10_000 + b"]" * 10_000,
        b'{"a":' * 10_000 + b"1" + b"}" * 10_000,
        b'{"store_id": "\xff\xfe"}',
        b'{"delivery_address": "\\u0000"}',
        b'{"delivery_address": "\\ud800"}',
        b'{"\\udc00": 1}',
        b'{"x": NaN}',
        b'{"x": ' + b"[" * 40 + b"]" * 40 + b"}",
    ],
    ids=[
        "deep-array",
        "deep-object",
        "bad-utf8",
        "nul",
        "lone-surrogate",
        "surrogate-key",
        "nan",
        "depth-41",
    ],
)
def test_hostile_json_is_a_400_problem_and_changes_nothing(client, token_service, raw):
    response = client.post(
        "/api/orders",
        data=raw,
        content_type="application/json",
        HTTP_IDEMPOTENCY_KEY="hostile-1",
        **token_service.auth_header(sub="u1", tenant_id="t1"),
    )

    assert response.status_code == 400, response.content
    assert response["Content-Type"] == "application/problem+json"
    assert response.json()["type"].endswith("/malformed-request")
    assert not Order.objects.exists()


@pytest.mark.parametrize("query", ["limit=0", "limit=201", "limit=abc", "offset=-1", "offset=x", "limit=-5"])
def test_list_refuses_bad_pagination(api, query):
    response = api.get(f"/api/orders?{query}")

    assert response.status_code == 400
    assert response["Content-Type"] == "application/problem+json"


def test_session_duration_is_the_orders_own_after_a_settings_change_and_an_extension(api, settings):
    settings.ORDER_SESSION_DURATION_MINUTES = 15
    order_id = api.create(VALID).json()["id"]
    settings.ORDER_SESSION_DURATION_MINUTES = 60

    assert api.get(f"/api/orders/{order_id}").json()["session"]["duration_minutes"] == 15

    from orders import services

    services.order_extend_expiration(order_id=order_id, minutes=10)
    session = api.get(f"/api/orders/{order_id}").json()["session"]
    assert session["duration_minutes"] == 25
    listed = api.get("/api/orders").json()["results"][0]["session"]
    assert listed == session
