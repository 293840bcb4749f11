"""GET /api/orders and /api/orders/{id}: ETag, Last-Modified, 304, never shared between users."""
# ruff: noqa: F811  (the api fixture is imported from test_order_api)

from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone
from django.utils.http import http_date
from freezegun import freeze_time

from tests.orders.test_order_api import VALID, api  # noqa: F401

pytestmark = pytest.mark.django_db


def test_detail_answers_304_to_its_etag_and_200_after_a_change(api, client):
    order_id = api.create(VALID).json()["id"]
    first = api.get(f"/api/orders/{order_id}")
    etag = first["ETag"]
    assert etag and first["Vary"] == "Authorization" and "private" in first["Cache-Control"]
    assert first["Last-Modified"]

    again = client.get(f"/api/orders/{order_id}", HTTP_IF_NONE_MATCH=etag, **api.auth)
    assert again.status_code == 304 and again.content == b"" and again["ETag"] == etag
    weak = client.get(f"/api/orders/{order_id}", HTTP_IF_NONE_MATCH=f'"x", W/{etag}', **api.auth)
    assert weak.status_code == 304

    api.post(f"/api/orders/{order_id}/cancel")
    changed = client.get(f"/api/orders/{order_id}", HTTP_IF_NONE_MATCH=etag, **api.auth)
    assert changed.status_code == 200 and changed.json()["status"] == "cancelled"
    assert changed["ETag"] != etag


def test_detail_answers_304_to_if_modified_since(api, client):
    order_id = api.create(VALID).json()["id"]
    last_modified = api.get(f"/api/orders/{order_id}")["Last-Modified"]

    same = client.get(f"/api/orders/{order_id}", HTTP_IF_MODIFIED_SINCE=last_modified, **api.auth)
    assert same.status_code == 304
    older = http_date((timezone.now() - timedelta(hours=1)).timestamp())
    assert client.get(f"/api/orders/{order_id}", HTTP_IF_MODIFIED_SINCE=older, **api.auth).status_code == 200


def test_an_order_that_expires_unswept_is_modified(api, client):
    order_id = api.create(VALID).json()["id"]
    before = api.get(f"/api/orders/{order_id}")
    with freeze_time(timezone.now() + timedelta(hours=2)):
        after = client.get(
            f"/api/orders/{order_id}",
            HTTP_IF_NONE_MATCH=before["ETag"],
            **api.auth,
        )
        assert after.status_code == 200 and after.json()["status"] == "expired"
        since = client.get(
            f"/api/orders/{order_id}", HTTP_IF_MODIFIED_SINCE=before["Last-Modified"], **api.auth
        )
        assert since.status_code == 200


def test_list_has_an_etag_and_answers_304_until_a_new_order(api, client):
    api.create(VALID, key="k-1")
    etag = api.get("/api/orders")["ETag"]
    assert client.get("/api/orders", HTTP_IF_NONE_MATCH=etag, **api.auth).status_code == 304

    api.create(VALID, key="k-2")
    assert client.get("/api/orders", HTTP_IF_NONE_MATCH=etag, **api.auth).status_code == 200


def test_etags_are_per_user_even_for_equal_bodies(api, client):
    # Two users with no orders have identical list bodies; their tags must still differ.
    mine = api.get("/api/orders")
    theirs = api.as_("u2").get("/api/orders")
    assert mine.json() == theirs.json()
    assert mine["ETag"] != theirs["ETag"]
    other = api.as_("u2")
    assert client.get("/api/orders", HTTP_IF_NONE_MATCH=mine["ETag"], **other.auth).status_code == 200
